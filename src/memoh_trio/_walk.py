"""A streaming walk of the source tree: ``os.scandir`` in a worker thread, in bounded batches.

The walk never blocks the event loop (each batch of ``lstat``/``readlink``/``scandir`` calls runs
in ``trio.to_thread``) and never holds the whole tree: it keeps one open directory iterator per
level of the current path, and hands each batch to a memory channel whose buffer gives
backpressure, so the copy starts on the first files while the walk goes on.

Links are never followed (only ``lstat`` and ``readlink``, relative to the descriptor of a
directory opened with ``O_NOFOLLOW`` and checked to be the one classified); special files are
never opened.
Each directory is reported before its contents, with ``empty_dir`` telling whether it had no
entries that create it in the container (none, or only special files, which are skipped).
Errors become entries with ``error`` set; they never stop the walk.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import trio

from ._plan import WalkEntry

#: Entries gathered per worker-thread trip: enough to amortise the ~50 µs thread hop, small
#: enough that the first file reaches the copier within a millisecond or two.
BATCH_SIZE = 256


#: How a directory is opened for listing: never through a symlink, never blocking.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass
class _Level:
    rel: str
    fd: int  # the directory, opened and checked (see Walker._open_dir)
    entries: Iterator[os.DirEntry[str]]
    close_it: Callable[[], None]

    def close(self) -> None:
        try:
            self.close_it()
        finally:
            os.close(self.fd)


class Walker:
    """Walk state; :meth:`next_batch` runs in a worker thread, never two at once.

    Every directory is opened with ``O_NOFOLLOW`` relative to its parent's descriptor and
    checked (``fstat``) to be the directory its ``lstat`` classified; its entries are listed
    and ``lstat``-ed relative to that descriptor. So a directory replaced by a symlink while the
    walk runs (to ``/etc``, say) is never listed through the link: the walk only ever reports
    entries that were inside the source tree.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self._stack: list[_Level] = []
        self._started = False
        self._lock = threading.Lock()
        self._busy = False  # a thread is in next_batch
        self._abandoned = False

    def abandon(self) -> None:
        """The walk was cancelled while a thread may still be in :meth:`next_batch`: the
        directory iterators are closed now if no thread is, else by that thread when it
        returns (never by two threads at once)."""
        with self._lock:
            self._abandoned = True
            if self._busy:
                return
        self.close()

    def close(self) -> None:
        """Close every open directory iterator (idempotent)."""
        while self._stack:
            self._stack.pop().close()

    def _open_dir(self, rel: str, name: str, parent_fd: int | None,
                  st: os.stat_result | None) -> tuple[_Level | None, bool, OSError | None]:
        """Open the directory ``name`` (relative to ``parent_fd``; the root by its path) and
        check it is the one ``st`` describes; returns (level, is_empty, error).

        ``is_empty``: no entry in it creates it in the container, i.e. it has none, or only
        special files (FIFOs, sockets, devices), which are skipped. Such a directory must be
        created like an empty one. Only the special files met before the first other entry are
        held in memory (usually none).
        """
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                exc = OSError(exc.errno, "it was replaced by a symlink or a file while the "
                              "source was listed (not followed)")
            return None, False, exc
        try:
            got = os.fstat(fd)
            if st is not None and (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino):
                raise OSError(errno.ESTALE, "it was replaced by another directory while the "
                              "source was listed")
            it = os.scandir(fd)
        except OSError as exc:
            os.close(fd)
            return None, False, exc
        ahead: list[os.DirEntry[str]] = []
        try:
            while True:
                de = next(it, None)
                if de is None:
                    break
                ahead.append(de)
                if not _is_special(de):
                    break
        except OSError as exc:
            it.close()
            os.close(fd)
            return None, False, exc
        if not ahead:
            it.close()
            os.close(fd)
            return None, True, None
        empty = _is_special(ahead[-1]) if ahead else True  # the listing ended on special files
        return _Level(rel, fd, itertools.chain(ahead, it), it.close), empty, None

    def next_batch(self, limit: int = BATCH_SIZE) -> list[WalkEntry]:
        """Up to ``limit`` more entries; an empty list means the walk is over."""
        with self._lock:
            if self._abandoned:
                return []
            self._busy = True
        try:
            return self._next_batch(limit)
        finally:
            with self._lock:
                self._busy = False
                abandoned = self._abandoned
            if abandoned:
                self.close()

    def _next_batch(self, limit: int) -> list[WalkEntry]:
        out: list[WalkEntry] = []
        if not self._started:
            self._started = True
            level, _empty, err = self._open_dir("", self.root, None, None)
            if err is not None:
                out.append(WalkEntry("", self.root, error=err))
            elif level is not None:
                self._stack.append(level)
        while self._stack and len(out) < limit:
            top = self._stack[-1]
            try:
                de = next(top.entries, None)
            except OSError as exc:  # listing failed part-way: that directory is incomplete
                out.append(WalkEntry(top.rel, os.path.join(self.root, top.rel), error=exc))
                self._stack.pop().close()
                continue
            if de is None:
                self._stack.pop().close()
                continue
            rel = f"{top.rel}/{de.name}" if top.rel else de.name
            out.append(self._entry(rel, de.name, top.fd))
        return out

    def _entry(self, rel: str, name: str, dir_fd: int) -> WalkEntry:
        host = os.path.join(self.root, rel)
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except OSError as exc:
            return WalkEntry(rel, host, error=exc)
        if stat.S_ISDIR(st.st_mode):
            level, empty, err = self._open_dir(rel, name, dir_fd, st)
            if err is not None:
                return WalkEntry(rel, host, st=st, error=err)
            if level is not None:
                self._stack.append(level)
            return WalkEntry(rel, host, st=st, empty_dir=empty)
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(name, dir_fd=dir_fd)
            except OSError as exc:
                return WalkEntry(rel, host, st=st, error=exc)
            return WalkEntry(rel, host, st=st, link_target=target)
        return WalkEntry(rel, host, st=st)


def _is_special(de: os.DirEntry[str]) -> bool:
    """Neither a directory, a regular file nor a symlink (never followed)."""
    try:
        return not (de.is_dir(follow_symlinks=False) or de.is_file(follow_symlinks=False)
                    or de.is_symlink())
    except OSError:
        return False  # cannot tell: the walk reports it, and the directory is not "empty"


async def walk(
    root: str | os.PathLike[str],
    send: trio.MemorySendChannel[list[WalkEntry]],
    *,
    batch_size: int = BATCH_SIZE,
) -> None:
    """Walk ``root`` and send every entry below it into ``send``, in lists of up to
    ``batch_size`` entries (in walk order), then close it.

    A list per worker-thread trip, not an entry per ``send``: a channel's send and receive
    cost ~6 µs of the event loop per item (100,000 entries walked and classified: 1.29 s of
    CPU one by one, 0.63 s in lists of 256).

    The root itself is not sent unless it cannot be listed (then one entry with ``rel == ""`` and
    ``error`` set is sent). Cancellation is honoured at once, even while a worker thread is in a
    ``scandir`` or ``lstat`` that does not return (a hung filesystem): that thread is abandoned.
    """
    walker = Walker(os.fspath(root))
    async with send:
        try:
            while True:
                batch = await trio.to_thread.run_sync(walker.next_batch, batch_size,
                                                      abandon_on_cancel=True)
                if not batch:
                    return
                await send.send(batch)
        finally:
            walker.abandon()
