"""Path confinement rules of the server, as pure functions (no I/O).

A request path names something under the server's ROOT. ``x`` and ``/x`` both mean ``ROOT/x``
(the container's view: the root is ``/``). This module only turns the request string into a
tuple of name components, lexically, and rejects what can never be valid:

* a NUL byte, a component longer than :data:`NAME_MAX` bytes or a path longer than
  :data:`PATH_MAX` bytes → :class:`InvalidPath`;
* ``..`` that climbs above ROOT (``../x``, ``a/../../x``) → :class:`PathEscape`.

Symlinks are not this module's business: :mod:`memoh_trio._fs` walks the components one directory
file descriptor at a time with ``O_NOFOLLOW`` and re-enters this module (:func:`split_link_target`)
to interpret a link's target, so a symlink can never lead outside ROOT either.
"""

from __future__ import annotations

import os
from collections.abc import Set as AbstractSet

#: Name prefixes of the temporary entries memoh-trio creates at a destination, never final names:
#: the server's upload in progress, the migrator's upload before its Rename, and a tar batch's
#: staging directory. A rerun removes those an interrupted run left behind.
SERVER_TEMP_PREFIX = ".memoh-tmp-"
PART_PREFIX = ".memoh-part-"
TAR_PREFIX = ".memoh-tar-"
TEMP_PREFIXES = (SERVER_TEMP_PREFIX, PART_PREFIX, TAR_PREFIX)

#: Longest single name Linux accepts (bytes, after UTF-8 encoding).
NAME_MAX = 255
#: Longest request path accepted (bytes); Linux's PATH_MAX.
PATH_MAX = 4096


class PathError(ValueError):
    """A request path that cannot be served. ``path`` is the path as the client sent it."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class InvalidPath(PathError):
    """Malformed path (empty where one is required, NUL byte, over-long name, the root where
    an entry is needed...). Maps to INVALID_ARGUMENT."""


class PathEscape(PathError):
    """The path (or a symlink on the way) would leave ROOT. Maps to PERMISSION_DENIED."""


def _encoded_len(text: str) -> int:
    return len(os.fsencode(text))


def split_request_path(path: str, *, allow_root: bool = True) -> tuple[str, ...]:
    """Normalise a request path into its components below ROOT.

    ``""``, ``"/"``, ``"."`` and ``"a/.."`` all name ROOT itself and give ``()``; that is refused
    with :class:`InvalidPath` when ``allow_root`` is false (the operation needs a path).

    Args:
        path: the path as received on the wire.
        allow_root: whether a path naming ROOT itself is acceptable.

    Returns:
        The components, none of them empty, ``"."`` or ``".."``.

    Raises:
        InvalidPath: NUL byte, over-long path or name, or ROOT when not allowed.
        PathEscape: ``..`` climbing above ROOT.
    """
    if "\x00" in path:
        raise InvalidPath("path contains a NUL byte", path)
    if _encoded_len(path) > PATH_MAX:
        raise InvalidPath(f"path is longer than {PATH_MAX} bytes", path)
    parts: list[str] = []
    for name in path.split("/"):
        if name in ("", "."):
            continue
        if name == "..":
            if not parts:
                raise PathEscape(f"path {path!r} leaves the root", path)
            parts.pop()
            continue
        if _encoded_len(name) > NAME_MAX:
            raise InvalidPath(f"a name in {path!r} is longer than {NAME_MAX} bytes", path)
        parts.append(name)
    if not parts and not allow_root:
        if path == "":
            raise InvalidPath("path is required", path)
        raise InvalidPath(f"path {path!r} names the root directory itself", path)
    return tuple(parts)


def split_link_target(target: str, *, link: str = "") -> list[str]:
    """The components of a symlink's target, to be walked from the link's directory.

    ``..`` components are kept: the walker applies them to its stack of open directories (and
    refuses to pop ROOT). An absolute target is refused: inside ROOT it would have to be
    re-rooted, and a link written by someone else most likely points at the host's tree.

    Raises:
        PathEscape: absolute target.
        InvalidPath: empty target or NUL byte.
    """
    if target.startswith("/"):
        raise PathEscape(f"symlink {link!r} points to an absolute path outside the root", link)
    if not target or "\x00" in target:
        raise InvalidPath(f"symlink {link!r} has an invalid target", link)
    return [name for name in target.split("/") if name not in ("", ".")]


def join(parts: tuple[str, ...] | list[str]) -> str:
    """Request-style spelling of components (``"a/b"``; ``""`` for ROOT)."""
    return "/".join(parts)


def symlink_on_the_way(rel: str, links: AbstractSet[str]) -> str | None:
    """The first proper ancestor of ``rel`` that is a symlink at the destination, if any (pure)."""
    parts = rel.split("/")
    for n in range(1, len(parts)):
        prefix = "/".join(parts[:n])
        if prefix in links:
            return prefix
    return None
