"""Single flight: two migrations of the same source never interleave.

The lock is an ``flock`` on a small file next to the source (``.<name>.memoh-lock`` in the
source's parent directory; not inside the source, which must stay untouched, and not the source
directory itself, which gets renamed). ``flock`` locks belong to the open file, so two tasks of one
process exclude each other just like two processes do, and the kernel drops the lock if the holder
dies. The lock file is left in place on release: unlinking it would race with a waiter that already
opened it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
from collections.abc import AsyncIterator

import trio

from ._errors import MigrationBusy, SourceError

#: How often a waiting run retries the lock (flock has no cancellable blocking form).
POLL_INTERVAL = 0.05


def lock_path(src: str | os.PathLike[str]) -> str:
    """The lock file of a source directory: a hidden sibling of it."""
    src = os.path.abspath(os.fspath(src)).rstrip(os.sep)
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
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


@contextlib.asynccontextmanager
async def single_flight(src: str | os.PathLike[str], *, wait: float = 0.0) -> AsyncIterator[str]:
    """Hold the single-flight lock of ``src`` for the enclosed block.

    Args:
        src: the source directory.
        wait: seconds to wait for another run to finish; 0 fails at once, ``math.inf`` waits
            for as long as it takes (cancellable).

    Yields:
        The lock file's path.

    Raises:
        MigrationBusy: another run holds the lock (after ``wait`` seconds).
        SourceError: the lock file cannot be created (e.g. the parent directory is read-only).
    """
    path = lock_path(src)
    try:
        fd = _open_lock_file(path)
    except OSError as exc:
        raise SourceError(
            f"cannot create the lock file {path} next to the source: "
            f"{exc.strerror or exc}"
        ) from None
    try:
        deadline = trio.current_time() + wait if math.isfinite(wait) else math.inf
        while not _try_lock(fd):
            if trio.current_time() >= deadline:
                raise MigrationBusy(
                    f"another migration of {os.fspath(src)!s} is running "
                    f"(lock {path} is held); try again when it has finished"
                )
            await trio.sleep(POLL_INTERVAL)
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
