"""What a source is before anything is copied (reruns, typos, empty sources), and its rename.

One rule for :func:`memoh_trio.migrate` and :func:`memoh_trio.migrate_bot` (the seed's, from
``migrateBindMountData``): a source that was migrated already is ``already-migrated``, an empty
one is ``nothing-to-do``; neither is copied nor renamed. What only a mistake can produce is refused
before anything is copied, with a hint: a ``.migrated`` directory given as the source, a source
whose ``.migrated`` sibling exists too (the rename at the end could only fail), a bot id that is
neither a directory nor a migrated one, a data root without ``bots/``. At the end of a complete
run, :func:`rename_source` renames the source, only if it still names the directory copied.
"""

from __future__ import annotations

import difflib
import os
import stat
from typing import Literal

from .._errors import SourceError
from .._plan import describe_os_error
from .context import MIGRATED_SUFFIX

SourceState = Literal["already-migrated", "nothing-to-do", "migrate"]


def source_state(src: str | os.PathLike[str]) -> tuple[str, SourceState]:
    """The absolute path and state of the source directory ``src`` for
    :func:`memoh_trio.migrate`.

    Raises:
        SourceError: ``path`` is itself a migrated source, or both ``path`` and
            ``path.migrated`` exist, or ``path`` is missing / not a directory / unreadable.
    """
    path = os.path.abspath(os.fspath(src))
    migrated = path + MIGRATED_SUFFIX
    if os.path.basename(path).endswith(MIGRATED_SUFFIX) and len(
            os.path.basename(path)) > len(MIGRATED_SUFFIX):
        original = path[: -len(MIGRATED_SUFFIX)]
        raise SourceError(
            f"source {path} is a migrated source (the result of an earlier migration of "
            f"{original}); nothing to do. To migrate it again, rename it back to {original}")
    exists = os.path.lexists(path)
    if not exists and os.path.isdir(migrated):
        return path, "already-migrated"
    if exists and os.path.lexists(migrated):
        raise SourceError(
            f"both {path} and {migrated} exist: the source was migrated before and has "
            f"reappeared, and renaming it at the end would fail. Move one of them aside "
            f"(e.g. compare them and delete the stale one), then run again")
    return path, "nothing-to-do" if is_empty_dir(path) else "migrate"


def is_empty_dir(path: str) -> bool:
    """Whether the directory ``path`` has no entries at all.

    Raises:
        SourceError: ``path`` is missing, not a directory or unreadable (in plain words).
    """
    return _readable_dir(path, path)


def _readable_dir(path: str, shown: str) -> bool:
    """Check that ``path`` is a readable directory (errors name it ``shown``); whether it is
    empty."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SourceError(f"source {shown} does not exist") from None
    except OSError as exc:
        raise SourceError(f"cannot read source {shown}: {describe_os_error(exc)}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(f"source {shown} is not a directory")
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except OSError as exc:
        raise SourceError(f"cannot read source {shown}: {describe_os_error(exc)}") from None


def check_data_root(data_root: str | os.PathLike[str]) -> str:
    """``DATA_ROOT/bots`` of a data root that has one; raise :class:`SourceError` with a hint
    otherwise (a missing root, a root without ``bots/``, or ``DATA_ROOT/bots`` itself given)."""
    root = os.path.abspath(os.fspath(data_root))
    bots_dir = os.path.join(root, "bots")
    if not os.path.isdir(root):
        what = "does not exist" if not os.path.lexists(root) else "is not a directory"
        raise SourceError(f"data root {root} {what}: give --data-root the directory that "
                          f"holds bots/ (DATA_ROOT/bots/<bot_id>)")
    if not os.path.isdir(bots_dir):
        if os.path.basename(root) == "bots" or _looks_like_bots_dir(root):
            raise SourceError(f"data root {root} has no bots/ directory; it looks like the bots "
                              f"directory itself: try --data-root {os.path.dirname(root)}")
        raise SourceError(f"data root {root} has no bots/ directory (expected "
                          f"{bots_dir}/<bot_id>): is it the right --data-root?")
    return bots_dir


def _looks_like_bots_dir(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            return any(e.name.endswith(MIGRATED_SUFFIX) for e in it)
    except OSError:
        return False


def unknown_bot(bots_dir: str, bot_id: str) -> SourceError:
    """The error for a bot id with neither a directory nor a ``.migrated`` one (a typo)."""
    try:
        with os.scandir(bots_dir) as it:
            names = {e.name.removesuffix(MIGRATED_SUFFIX) for e in it
                     if not e.name.startswith(".")}
    except OSError:
        names = set()
    close = difflib.get_close_matches(bot_id, sorted(names), n=3, cutoff=0.6)
    if close:
        hint = "did you mean " + " or ".join(repr(n) for n in close) + "?"
    elif names:
        shown = sorted(names)[:5]
        more = f" (and {len(names) - 5} more)" if len(names) > 5 else ""
        hint = "bots there: " + ", ".join(shown) + more
    else:
        hint = f"{bots_dir} holds no bots"
    return SourceError(f"no bot {bot_id!r} in {bots_dir} (neither {bot_id} nor "
                       f"{bot_id}{MIGRATED_SUFFIX} exists): {hint}")


def check_source(src: str | os.PathLike[str]) -> str:
    """Check that ``src`` is a readable directory; return its real path (``realpath``).

    A symlinked SRC (or one with a symlinked parent) is resolved: the run copies, locks and
    renames the real directory, whichever name it was given by.

    Raises:
        SourceError: missing, not a directory, or unreadable (in plain words).
    """
    given = os.path.abspath(os.fspath(src))
    path = real_source(given)
    _readable_dir(path, given)
    if os.path.dirname(path) == path:
        raise SourceError(f"source {given} is the root directory: it cannot be renamed")
    return path


def real_source(src: str | os.PathLike[str]) -> str:
    """``src`` resolved to its real path (``realpath``; a dangling alias of a migrated source
    resolves to the renamed directory's old name, so it reads as already migrated)."""
    return os.path.realpath(os.path.abspath(os.fspath(src)))


def source_identity(path: str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the directory ``path`` names (not followed), or ``None``."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    return st.st_dev, st.st_ino


def already_migrated(src: str) -> bool:
    return not os.path.lexists(src) and os.path.isdir(src + MIGRATED_SUFFIX)


def rename_source(src: str, identity: tuple[int, int] | None) -> tuple[str | None, str | None]:
    """Rename ``src`` to ``src + MIGRATED_SUFFIX`` if it still names the directory that was
    copied (``identity``, see :func:`source_identity`). Synchronous: no checkpoint, so it can
    follow the rename decision directly. Returns the new name, or ``None`` and why not."""
    target = src + MIGRATED_SUFFIX
    if source_identity(src) != identity:
        return None, (f"everything was copied, but {src} no longer names the directory that "
                      "was copied (it was replaced during the run): not renamed")
    try:
        os.rename(src, target)
    except OSError as exc:
        return None, (f"everything was copied, but renaming the source to {target} failed: "
                      f"{describe_os_error(exc)}")
    return target, None
