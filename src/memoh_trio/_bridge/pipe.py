"""Pipe: a bounded single-producer/single-consumer queue between a Trio task and an asyncio task.

Where the data of a call comes from or goes to a Trio task (an async-iterable WriteRaw source,
ReadRaw, Exec stdin), the two loops meet in a :class:`Pipe`, which both can wait on without
crossing the bridge per item (trio-asyncio runs both loops in one thread).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterable
from typing import Generic, TypeVar

import trio

from .errors import SourceFailure

T = TypeVar("T")

# How many chunks may wait in a Pipe between the two loops.
PIPE_CAPACITY = 2

class Pipe(Generic[T]):
    """Bounded queue whose producer and consumer may each be a Trio or an asyncio task.

    Both loops run in the same thread under trio-asyncio, so setting a ``trio.Event`` from asyncio
    code and resolving an ``asyncio.Future`` from Trio code are both plain synchronous calls.
    ``close(error)`` ends the stream; the consumer sees the remaining items, then the error (or
    the end). ``abandon()`` tells the producer that nobody will consume any more.
    """

    def __init__(self, capacity: int = PIPE_CAPACITY) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._capacity = capacity
        self._closed = False
        self._abandoned = False
        self._error: BaseException | None = None
        self._trio_waiter: trio.Event | None = None
        self._aio_waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        if self._trio_waiter is not None:
            self._trio_waiter.set()
            self._trio_waiter = None
        if self._aio_waiter is not None:
            if not self._aio_waiter.done():
                self._aio_waiter.set_result(None)
            self._aio_waiter = None

    def _full(self) -> bool:
        return len(self._items) >= self._capacity and not self._abandoned

    def _put_nowait(self, item: T) -> bool:
        if self._abandoned:
            return False
        if self._closed:
            raise RuntimeError("put on a closed pipe")
        self._items.append(item)
        self._wake()
        return True

    def _take(self) -> T | None:
        if self._items:
            item = self._items.popleft()
            self._wake()
            return item
        if self._error is not None:
            raise self._error
        return None

    def close(self, error: BaseException | None = None) -> None:
        if not self._closed:
            self._closed = True
            self._error = error
            self._wake()

    def abandon(self) -> None:
        self._abandoned = True
        self._items.clear()
        self._wake()

    # Trio side
    async def put(self, item: T) -> bool:
        """Wait for room, then enqueue. False when the consumer abandoned the pipe."""
        while self._full():
            self._trio_waiter = trio.Event()
            await self._trio_waiter.wait()
        return self._put_nowait(item)

    async def get(self) -> T | None:
        """Next item, None at the end; raises the producer's error."""
        while not self._items and not self._closed:
            self._trio_waiter = trio.Event()
            await self._trio_waiter.wait()
        return self._take()

    # asyncio side
    async def aput(self, item: T) -> bool:
        while self._full():
            self._aio_waiter = asyncio.get_running_loop().create_future()
            await self._aio_waiter
        return self._put_nowait(item)

    async def aget(self) -> T | None:
        while not self._items and not self._closed:
            self._aio_waiter = asyncio.get_running_loop().create_future()
            await self._aio_waiter
        return self._take()


async def pump(source: AsyncIterable[bytes], pipe: Pipe[bytes]) -> None:
    """Trio task: copy ``source`` into ``pipe``; a source failure closes the pipe with the error.

    The source's iterator is closed (``aclose``) when the pump stops early, also on cancellation.
    """
    iterator = aiter(source)
    try:
        async for data in iterator:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"source yielded {type(data).__name__}, not bytes")
            if data and not await pipe.put(bytes(data)):
                return
    except Exception as exc:
        pipe.close(SourceFailure(exc))
    else:
        pipe.close()
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await aclose()

