"""Single flight: two migrations of the same source never interleave.

The lock is an ``flock`` on a small file next to the source (``.<name>.memoh-lock`` in the
source's parent directory; not inside the source, which must stay untouched, and not the source
directory itself, which gets renamed). It is keyed on the real directory: the source path is
resolved with ``realpath`` first, so ``migrate src`` and ``migrate alias`` (``alias -> src``)
meet the same lock file.

``flock`` locks belong to the open file, so two tasks of one process exclude each other just like
two processes do, and the kernel drops the lock if the holder dies. The holder unlinks the lock
file when it releases it (while still holding it), so lock files do not pile up next to the
sources. That would race with a run that opened the file just before the unlink and locks it
just after; so a run that got the lock checks that the path still names the file it locked
(``fstat`` of its descriptor against ``lstat`` of the path) and otherwise starts again on the
new file. At any moment at most one run holds a lock on the file the path names.

The lock file is opened with ``O_NOFOLLOW | O_NONBLOCK`` and must be a regular file: a symlink or
a FIFO planted at its name is refused, never followed or waited on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import stat
from collections.abc import AsyncIterator

import trio

from ._errors import MigrationBusy, SourceError

#: How often a waiting run retries the lock (flock has no cancellable blocking form).
POLL_INTERVAL = 0.05

_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def lock_path(src: str | os.PathLike[str]) -> str:
    """The lock file of a source directory: a hidden sibling of the real directory."""
    src = os.path.realpath(os.fspath(src)).rstrip(os.sep)
    parent, name = os.path.split(src)
    return os.path.join(parent, f".{name}.memoh-lock")


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _open_lock_file(path: str) -> int:
    """Open (create) the lock file; it must be a regular file, never followed or waited on."""
    try:
        fd = os.open(path, _OPEN_FLAGS, 0o600)
    except OSError as exc:
        why = ("it is a symlink (refused, not followed)" if exc.errno == errno.ELOOP
               else exc.strerror or str(exc))
        raise SourceError(f"cannot create the lock file {path} next to the source: {why}; "
                          "remove it if no migration is running") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise SourceError(f"the lock file {path} is not a regular file; remove it if no "
                          "migration is running")
    return fd


def _names(fd: int, path: str) -> bool:
    """Whether ``path`` (not followed) is the file open as ``fd``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _acquire(path: str) -> int | None:
    """One attempt: the locked descriptor of the file ``path`` names, or ``None`` if another
    run holds it."""
    while True:
        fd = _open_lock_file(path)
        try:
            if not _try_lock(fd):
                os.close(fd)
                return None
            if _names(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        # The previous holder unlinked the file between our open and our flock: the lock we got
        # is on a file nobody else will look at. Start again on the file the path names now.
        os.close(fd)


def _release(fd: int, path: str) -> None:
    try:
        with contextlib.suppress(OSError):
            if _names(fd, path):
                os.unlink(path)  # while still holding it: see the module docstring
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def single_flight(src: str | os.PathLike[str], *, wait: float = 0.0) -> AsyncIterator[str]:
    """Hold the single-flight lock of ``src`` for the enclosed block.

    Args:
        src: the source directory (resolved with ``realpath``).
        wait: seconds to wait for another run to finish; 0 fails at once, ``math.inf`` waits
            for as long as it takes (cancellable).

    Yields:
        The lock file's path (removed again when the block ends).

    Raises:
        MigrationBusy: another run holds the lock (after ``wait`` seconds).
        SourceError: the lock file cannot be created (e.g. the parent directory is read-only),
            or something other than a regular file is in its place.
    """
    path = lock_path(src)
    deadline = trio.current_time() + wait if math.isfinite(wait) else math.inf
    while (fd := _acquire(path)) is None:
        if trio.current_time() >= deadline:
            raise MigrationBusy(
                f"another migration of {os.fspath(src)} is running "
                f"(lock {path} is held); try again when it has finished"
            )
        await trio.sleep(POLL_INTERVAL)
    try:
        yield path
    finally:
        _release(fd, path)
