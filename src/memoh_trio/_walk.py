"""A streaming walk of the source tree: ``os.scandir`` in a worker thread, in bounded batches.

The walk never blocks the event loop (each batch of ``lstat``/``readlink``/``scandir`` calls runs
in ``trio.to_thread``) and never holds the whole tree: it keeps one open directory iterator per
level of the current path, and hands each batch to a memory channel whose buffer gives
backpressure, so the copy starts on the first files while the walk goes on.

Links are never followed (only ``lstat`` and ``readlink``); special files are never opened.
Each directory is reported before its contents, with ``empty_dir`` telling whether it had no
entries. Errors become entries with ``error`` set; they never stop the walk.
"""

from __future__ import annotations

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


@dataclass
class _Level:
    rel: str
    entries: Iterator[os.DirEntry[str]]
    close: Callable[[], None]


class Walker:
    """Walk state; :meth:`next_batch` runs in a worker thread, never two at once."""

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
            self._close_level(self._stack.pop())

    @staticmethod
    def _close_level(level: _Level) -> None:
        level.close()

    def _open_dir(self, rel: str, host: str) -> tuple[_Level | None, bool, OSError | None]:
        """Open a directory; returns (level, is_empty, error)."""
        try:
            it = os.scandir(host)
        except OSError as exc:
            return None, False, exc
        try:
            first = next(it, None)
        except OSError as exc:
            it.close()
            return None, False, exc
        if first is None:
            it.close()
            return None, True, None
        return _Level(rel, itertools.chain([first], it), it.close), False, None

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
            level, _empty, err = self._open_dir("", self.root)
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
                self._close_level(self._stack.pop())
                continue
            if de is None:
                self._close_level(self._stack.pop())
                continue
            rel = f"{top.rel}/{de.name}" if top.rel else de.name
            out.append(self._entry(rel, de.path))
        return out

    def _entry(self, rel: str, host: str) -> WalkEntry:
        try:
            st = os.lstat(host)
        except OSError as exc:
            return WalkEntry(rel, host, error=exc)
        if stat.S_ISDIR(st.st_mode):
            level, empty, err = self._open_dir(rel, host)
            if err is not None:
                return WalkEntry(rel, host, st=st, error=err)
            if level is not None:
                self._stack.append(level)
            return WalkEntry(rel, host, st=st, empty_dir=empty)
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(host)
            except OSError as exc:
                return WalkEntry(rel, host, st=st, error=exc)
            return WalkEntry(rel, host, st=st, link_target=target)
        return WalkEntry(rel, host, st=st)


async def walk(
    root: str | os.PathLike[str],
    send: trio.MemorySendChannel[WalkEntry],
    *,
    batch_size: int = BATCH_SIZE,
) -> None:
    """Walk ``root`` and send every entry below it into ``send``, then close it.

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
                for entry in batch:
                    await send.send(entry)
        finally:
            walker.abandon()
