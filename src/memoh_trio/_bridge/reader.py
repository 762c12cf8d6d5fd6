"""The WriteRaw source reader: the source's chunks, on the asyncio side, without blocking the loop.

A source is bytes, a host path, a binary file object or a :class:`~.pipe.Pipe` fed by a Trio
task (see :class:`SourceSpec`); :class:`Reader` yields its chunks into two reused buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from dataclasses import dataclass
from typing import IO, Any

from . import threads
from .errors import SourceFailure
from .pipe import Pipe


@dataclass
class SourceSpec:
    """What :meth:`BridgeChannel.write_raw` streams: exactly one of the fields is set."""

    data: bytes | memoryview | None = None
    path: str | None = None
    file: IO[bytes] | None = None
    pipe: Pipe[bytes] | None = None


#: ``preadv(..., RWF_NOWAIT)``: read only what the page cache already holds, never block.
NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None) if hasattr(os, "preadv") else None


class BufferPool:
    """Chunk buffers handed from one stream to the next, at most ``keep`` of each size kept.

    A fresh 1 MiB ``bytearray`` is zero-filled (and, in a new process, faulted in page by
    page): the mixed tree (c) has 71 files streamed, two buffers each, ~8 ms of the event loop
    per run (cProfile: ``Reader._buffer``). Used only on the asyncio loop's thread.
    """

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._free: dict[int, list[bytearray]] = {}

    def take(self, size: int) -> bytearray:
        free = self._free.get(size)
        return free.pop() if free else bytearray(size)

    def give(self, buffers: list[bytearray]) -> None:
        for buf in buffers:
            free = self._free.setdefault(len(buf), [])
            if len(free) < self._keep:
                free.append(buf)

    def kept(self, size: int) -> int:
        return len(self._free.get(size, ()))


#: The buffers of the streams that ended (two per stream; 8 streams at once by default).
POOL = BufferPool(keep=16)


class Reader:
    """asyncio side: yields the source's chunks without blocking the event loop.

    A file given by path is read with ``preadv(..., RWF_NOWAIT)`` on the loop thread while the
    page cache holds its data (the usual case for a file being copied: a 1 MiB read from the
    cache is cheaper than the hand-off to a worker thread and back, which was measured at
    about 1 ms per chunk on 2 busy cores); when the data is not cached yet the kernel says
    EAGAIN and that chunk is read in a worker thread. File objects, and reads that hash the
    data (sha256 verification: hashing runs in the thread, where it releases the GIL), always
    use the worker thread, one chunk ahead.

    Chunks are read into two buffers used in turn, so a stream holds two chunks of the source
    however long it is, and the memory is reused instead of allocated per chunk. (Returning a
    fresh ``bytes`` per read left each chunk referenced from a reference cycle of the executor
    future until the cyclic GC ran: 33 MiB of chunks alive at once were measured on a 2 x 128
    MiB copy.) A chunk returned by :meth:`next` is valid only until the following call. The
    buffers come from :data:`POOL` and go back to it when the reader is closed with no read
    in flight (a chunk sent is in the socket or copied by then: see :mod:`.h2patch`).
    """

    def __init__(self, spec: SourceSpec, chunk_size: int, hasher: Any | None) -> None:
        self._spec = spec
        self._chunk = chunk_size
        self._hasher = hasher
        self._offset = 0
        self._fd = -1  # the source file, when opened here from spec.path
        self._nowait = NOWAIT is not None and hasher is None and spec.path is not None
        self._ahead: asyncio.Future[memoryview] | None = None
        self._buffers: list[bytearray] = []
        self._reading: set[object] = set()  # reads in worker threads, until each returns
        self._turn = 0

    def _buffer(self) -> memoryview:
        if len(self._buffers) < 2:
            self._buffers.append(POOL.take(self._chunk))
        buf = self._buffers[self._turn % len(self._buffers)]
        self._turn += 1
        return memoryview(buf)

    def _read_blocking(self, view: memoryview) -> memoryview:
        spec = self._spec
        if spec.path is not None:
            if self._fd < 0:
                self._fd = os.open(spec.path, os.O_RDONLY | os.O_CLOEXEC)
                with contextlib.suppress(OSError):
                    os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            n: int | None = os.preadv(self._fd, [view], self._offset)
        else:
            assert spec.file is not None
            # read(), not readinto(): any file-like object has it (a RawIOBase subclass may
            # implement read() alone); the copy into the buffer keeps the memory bounded.
            data = spec.file.read(self._chunk)
            n = None if data is None else len(data)
            if data:
                view[: len(data)] = data
            if n is None:  # non-blocking raw file with nothing ready
                raise OSError(errno.EAGAIN, "source file returned no data (non-blocking?)")
        assert n is not None
        self._offset += n
        chunk = view[:n]
        if self._hasher is not None and n:
            self._hasher.update(chunk)
        return chunk

    def _read_cached(self) -> memoryview | None:
        """A chunk straight from the page cache, or None when that would block."""
        assert NOWAIT is not None
        view = self._buffer()
        try:
            n = os.preadv(self._fd, [view], self._offset, NOWAIT)
        except BlockingIOError:
            self._turn -= 1  # the buffer was not used
            return None
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # no RWF_NOWAIT here
                self._nowait = False
                self._turn -= 1
                return None
            raise
        self._offset += n
        return view[:n]

    def _start_read(self) -> asyncio.Future[memoryview]:
        token = object()
        self._reading.add(token)
        return threads.run(self._read_in_thread, self._buffer(), token)

    def _read_in_thread(self, view: memoryview, token: object) -> memoryview:
        try:
            return self._read_blocking(view)
        finally:
            # Only now is the buffer free: a cancelled read's future is done at once, while
            # its thread may still be writing into the buffer.
            self._reading.discard(token)

    async def next(self) -> bytes | memoryview:
        """Next chunk, empty at the end; raises SourceFailure."""
        spec = self._spec
        try:
            if spec.data is not None:
                view = memoryview(spec.data)[self._offset : self._offset + self._chunk]
                self._offset += len(view)
                if self._hasher is not None and view:
                    self._hasher.update(view)
                return view
            if spec.pipe is not None:
                item = await spec.pipe.aget()
                if item is None:
                    return b""
                if self._hasher is not None:
                    self._hasher.update(item)
                return item
            if self._nowait and self._fd >= 0:
                cached = self._read_cached()
                if cached is not None:
                    return cached
            fut = self._ahead if self._ahead is not None else self._start_read()
            self._ahead = None
            data = await fut
            if data and not self._nowait:
                self._ahead = self._start_read()
            return data
        except SourceFailure:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise SourceFailure(exc) from exc

    async def aclose(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(ahead)
        if not self._reading:  # no worker thread writes into a buffer any more
            POOL.give(self._buffers)
        self._buffers = []
        if self._spec.pipe is not None:
            self._spec.pipe.abandon()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

