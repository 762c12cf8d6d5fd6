"""Resolution of a request path under the root fd, one component at a time, never out of ROOT.

:func:`resolve` walks the path from the root's file descriptor,
``os.open(name, O_DIRECTORY | O_NOFOLLOW, dir_fd=parent)``, holding each directory open: there is
no check-then-open window. A symlink met on the way is read with ``readlinkat`` and its target is
walked the same way (relative targets only, never above ROOT, at most :data:`MAX_SYMLINKS`). The
other modules of :mod:`memoh_trio._fs` act only on what it returns.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_mod
from typing import Literal

from .._paths import (
    InvalidPath,
    PathError,
    PathEscape,
    join,
    split_link_target,
    split_request_path,
)

#: Symlinks followed while resolving one path before giving up with ELOOP (Linux's limit).
MAX_SYMLINKS = 40
#: Permissions of created directories (before the process umask).
DIR_MODE = 0o755
#: How every directory on a path is opened: never through a symlink.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Mode = Literal["parent", "follow", "dir"]


class Resolved:
    """Result of a walk: the open directory ``dir_fd`` and the final ``name`` inside it
    (``None``: the directory itself is the target). Closes the fds it opened."""

    def __init__(self, fds: list[int], name: str | None) -> None:
        self._fds = fds
        self.dir_fd = fds[-1]
        self.name = name

    def close(self) -> None:
        fds, self._fds = self._fds[1:], self._fds[:1]
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> Resolved:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _raise_with_path(exc: OSError, path: str) -> OSError:
    return OSError(exc.errno, exc.strerror, path)


def resolve(root_fd: int, path: str, *, mode: Mode, create: bool = False,
            allow_root: bool = True) -> Resolved:
    """Walk ``path`` from ``root_fd`` without following any symlink out of ROOT.

    Args:
        mode: ``"parent"``: stop before the last component (it is not followed);
            ``"follow"``: a symlink as last component is followed (inside ROOT);
            ``"dir"``: every component, the last one included, must be a directory (opened).
        create: create missing directories on the way (``mkdir -p``).
        allow_root: see :func:`split_request_path`.
    """
    parts = split_request_path(path, allow_root=allow_root)
    pending = list(reversed(parts))
    fds = [root_fd]
    links = 0
    try:
        while pending:
            name = pending.pop()
            if name == "..":
                if len(fds) == 1:
                    raise PathEscape(f"a symlink in {path!r} leads outside the root", path)
                os.close(fds.pop())
                continue
            last = not pending
            if last and mode == "parent":
                return Resolved(fds, name)
            if last and mode == "follow":
                try:
                    st = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
                except FileNotFoundError:
                    return Resolved(fds, name)
                if not stat_mod.S_ISLNK(st.st_mode):
                    return Resolved(fds, name)
            else:
                try:
                    fds.append(os.open(name, DIR_FLAGS, dir_fd=fds[-1]))
                    continue
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, DIR_MODE, dir_fd=fds[-1])
                    # A symlink swapped in right now makes this fail (ELOOP): never followed.
                    fds.append(os.open(name, DIR_FLAGS, dir_fd=fds[-1]))
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
                    if not stat_mod.S_ISLNK(st.st_mode):
                        raise NotADirectoryError(
                            errno.ENOTDIR, "not a directory", join(parts)) from None
            # ``name`` is a symlink: walk its target from the current directory instead.
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
            target = os.readlink(name, dir_fd=fds[-1])
            pending.extend(reversed(split_link_target(target, link=path)))
        return Resolved(fds, None)
    except PathError:
        Resolved(fds, None).close()
        raise
    except OSError as exc:
        Resolved(fds, None).close()
        raise _raise_with_path(exc, path) from exc
    except BaseException:
        Resolved(fds, None).close()
        raise


def require_path(path: str) -> str:
    """Refuse an empty path where the operation needs one (as Memoh's Go server does)."""
    if not path:
        raise InvalidPath("path is required", path)
    return path


def with_path(exc: OSError, path: str) -> OSError:
    """``exc`` naming the request ``path`` (as :func:`~memoh_trio._fs.status_for` reports it)."""
    return exc if exc.filename == path else _raise_with_path(exc, path)


def open_resolved_dir(res: Resolved) -> int:
    """A new fd for the directory ``res`` designates."""
    if res.name is None:
        return os.open(".", DIR_FLAGS, dir_fd=res.dir_fd)
    return os.open(res.name, DIR_FLAGS, dir_fd=res.dir_fd)


def open_dir(root_fd: int, path: str) -> int:
    """Open a directory under ROOT (symlinks inside ROOT followed); the caller closes the fd."""
    with resolve(root_fd, path, mode="dir") as res:
        return os.open(".", DIR_FLAGS, dir_fd=res.dir_fd)
