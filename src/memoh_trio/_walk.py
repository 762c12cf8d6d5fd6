"""A streaming walk of the source tree: ``os.scandir`` in a worker thread, in bounded batches.

The walk never blocks the event loop (each batch of ``lstat``/``readlink``/``scandir`` calls runs
in ``trio.to_thread``) and never holds the whole tree: it keeps one open directory iterator per
level of the current path, and hands each batch to a memory channel whose buffer gives
backpressure, so the copy starts on the first files while the walk goes on.

Links are never followed (only ``lstat`` and ``readlink``); special files are never opened.
Each directory is reported before its contents, with ``empty_dir`` telling whether it had no
entries that create it in the container (none, or only special files, which are skipped).
Errors become entries with ``error`` set; they never stop the walk.
"""

from __future__ import annotations

import itertools
import os
import stat
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

    def close(self) -> None:
        """Close every open directory iterator (idempotent)."""
        while self._stack:
            self._close_level(self._stack.pop())

    @staticmethod
    def _close_level(level: _Level) -> None:
        level.close()

    def _open_dir(self, rel: str, host: str) -> tuple[_Level | None, bool, OSError | None]:
        """Open a directory; returns (level, is_empty, error).

        ``is_empty``: no entry in it creates it in the container, i.e. it has none, or only
        special files (FIFOs, sockets, devices), which are skipped. Such a directory must be
        created like an empty one. Only the special files met before the first other entry are
        held in memory (usually none).
        """
        try:
            it = os.scandir(host)
        except OSError as exc:
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
            return None, False, exc
        if not ahead:
            it.close()
            return None, True, None
        empty = _is_special(ahead[-1]) if ahead else True  # the listing ended on special files
        return _Level(rel, itertools.chain(ahead, it), it.close), empty, None

    def next_batch(self, limit: int = BATCH_SIZE) -> list[WalkEntry]:
        """Up to ``limit`` more entries; an empty list means the walk is over."""
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


def _is_special(de: os.DirEntry[str]) -> bool:
    """Neither a directory, a regular file nor a symlink (never followed)."""
    try:
        return not (de.is_dir(follow_symlinks=False) or de.is_file(follow_symlinks=False)
                    or de.is_symlink())
    except OSError:
        return False  # cannot tell: the walk reports it, and the directory is not "empty"


async def walk(
    root: str | os.PathLike[str],
    send: trio.MemorySendChannel[WalkEntry],
    *,
    batch_size: int = BATCH_SIZE,
) -> None:
    """Walk ``root`` and send every entry below it into ``send``, then close it.

    The root itself is not sent unless it cannot be listed (then one entry with ``rel == ""`` and
    ``error`` set is sent). Cancellation is honoured between batches.
    """
    walker = Walker(os.fspath(root))
    async with send:
        try:
            while True:
                batch = await trio.to_thread.run_sync(walker.next_batch, batch_size)
                if not batch:
                    return
                for entry in batch:
                    await send.send(entry)
        finally:
            walker.close()
