"""grpclib client channel behind plain Trio functions.

Every public coroutine of :class:`BridgeChannel` is Trio-flavoured and crosses into asyncio exactly
once (``loop.run_aio_coroutine``): a unary call is one crossing, and so is a whole WriteRaw stream —
opening the HTTP/2 stream, reading the source chunk by chunk (files in a worker thread, read one
chunk ahead so disk and network overlap), ``send_message`` per chunk with HTTP/2 flow control as
backpressure, ending the stream and receiving the reply. Where the data comes from or goes to a
Trio task (an async-iterable WriteRaw source, ReadRaw, Exec stdin), the two sides meet in a
:class:`Pipe`, a small bounded single-producer/single-consumer queue that both loops can wait on
without crossing the bridge per item (trio-asyncio runs both in one thread).

Errors are mapped here, at the edge, onto :mod:`memoh_trio._errors`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import hashlib
import os
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any, Generic, TypeVar, cast

# trio_asyncio is imported before grpclib by the package's __init__ (it must patch asyncio first).
import grpclib.client
import grpclib.config
import grpclib.const
import grpclib.exceptions
import grpclib.protocol
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio
import trio_asyncio

from .. import _errors, _wire
from .._proto import mcpcontainer as pb
from . import compat, h2patch, threads
from .codec import Codec, Encoded

T = TypeVar("T")

_SERVICE = "/mcpcontainer.ContainerService/"

# Inbound HTTP/2 flow-control windows of the client (they bound ReadRaw/Exec output in flight).
# 4 MiB per stream and 16 MiB per connection: measured in benchmarks (see the report); larger
# windows did not read faster on loopback, smaller ones (64 KiB) cut ReadRaw throughput sharply.
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
# Largest DATA frame the client accepts (HTTP/2 default is 16 KiB; the maximum 16 MiB - 1).
MAX_INBOUND_FRAME = 1024 * 1024
# Largest message the client accepts from a server (ReadRaw chunks, ListDir replies).
MAX_RECEIVE_MESSAGE = 16 * 1024 * 1024
# How many chunks may wait in a Pipe between the two loops.
PIPE_CAPACITY = 2


# --------------------------------------------------------------------------------------------
# Pipe: a bounded SPSC queue between a Trio task and an asyncio task in the same thread.


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


# --------------------------------------------------------------------------------------------
# Error mapping


class SourceFailure(Exception):
    """Internal: reading the WriteRaw source failed (wraps the original error)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class SizeMismatch(Exception):
    """Internal: the source did not have exactly ``expected_size`` bytes."""


def _describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def map_error(exc: BaseException, method: str, target: str) -> BaseException:
    """Translate grpclib/transport exceptions into memoh-trio errors (others pass unchanged)."""
    if isinstance(exc, grpclib.exceptions.GRPCError):
        return _errors.error_for_status(int(exc.status.value), exc.message or "", method=method)
    if isinstance(exc, grpclib.exceptions.StreamTerminatedError):
        return _errors.Unavailable(f"connection to {target} broke: {exc}", method=method)
    if isinstance(exc, grpclib.exceptions.ProtocolError):
        return _errors.Unavailable(f"protocol error talking to {target}: {exc}", method=method)
    if isinstance(exc, h2.exceptions.NoSuchStreamError):
        # Stream-level: the server closed (or reset) this one call; the connection is fine.
        return _errors.RPCError(f"the server closed the {method} stream early",
                                status=_errors.Status.UNKNOWN, method=method)
    if isinstance(exc, h2.exceptions.H2Error):  # connection-level HTTP/2 error: it is dead
        return _errors.Unavailable(f"HTTP/2 protocol error talking to {target}: {exc}",
                                   method=method)
    if isinstance(exc, AttributeError) and "_transport" in str(exc):
        # grpclib 0.4 (protocol.py, Connection.create_stream) reads ``self._transport`` after
        # connection_lost() deleted it: the peer accepted and closed at once.
        return _errors.Unavailable(f"connection to {target} was closed by the peer",
                                   method=method)
    if isinstance(exc, TimeoutError):  # grpclib's deadline (before OSError: TimeoutError is one)
        return _errors.DeadlineExceeded("deadline exceeded", method=method)
    if isinstance(exc, (ConnectionError, OSError, EOFError)):
        return _errors.Unavailable(
            f"connection to {target} failed: {_describe_os_error(exc)}", method=method
        )
    return exc


# --------------------------------------------------------------------------------------------
# Sources of WriteRaw


@dataclass
class SourceSpec:
    """What :meth:`BridgeChannel.write_raw` streams: exactly one of the fields is set."""

    data: bytes | memoryview | None = None
    path: str | None = None
    file: IO[bytes] | None = None
    pipe: Pipe[bytes] | None = None


#: ``preadv(..., RWF_NOWAIT)``: read only what the page cache already holds, never block.
_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None) if hasattr(os, "preadv") else None


class _Reader:
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
    MiB copy.) A chunk returned by :meth:`next` is valid only until the following call.
    """

    def __init__(self, spec: SourceSpec, chunk_size: int, hasher: Any | None) -> None:
        self._spec = spec
        self._chunk = chunk_size
        self._hasher = hasher
        self._offset = 0
        self._fd = -1  # the source file, when opened here from spec.path
        self._nowait = _NOWAIT is not None and hasher is None and spec.path is not None
        self._ahead: asyncio.Future[memoryview] | None = None
        self._buffers: list[bytearray] = []
        self._turn = 0

    def _buffer(self) -> memoryview:
        if len(self._buffers) < 2:
            self._buffers.append(bytearray(self._chunk))
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
        assert _NOWAIT is not None
        view = self._buffer()
        try:
            n = os.preadv(self._fd, [view], self._offset, _NOWAIT)
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
        return threads.run(self._read_blocking, self._buffer())

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
        if self._ahead is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._ahead)
            self._ahead = None
        if self._spec.pipe is not None:
            self._spec.pipe.abandon()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# --------------------------------------------------------------------------------------------
# The channel


#: Longest wait in :meth:`BridgeChannel.aclose` for the connection to be closed (a TLS shutdown
#: waits for the peer's close_notify); then the transport is aborted. Every call on it has
#: ended by then, so nothing is lost either way. memoh-trio's server answers at once (about 15
#: ms per connection here); grpcio's Python server does not answer close_notify at all.
CLOSE_TIMEOUT = 0.2


class _Protocol(grpclib.protocol.H2Protocol):
    """grpclib's protocol, also advertising a larger inbound frame size, and telling when the
    connection is really gone (see :meth:`wait_lost`)."""

    _lost: asyncio.Future[None] | None = None
    _transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._lost = asyncio.get_running_loop().create_future()
        self._transport = transport
        super().connection_made(transport)
        conn = compat.h2_connection(self)
        h2patch.adopt(conn)
        conn.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_INBOUND_FRAME})
        self.connection.flush()
        processors = compat.stream_processors(self)
        upstream: Callable[[h2.events.StreamReset], None] = processors[h2.events.StreamReset]

        def on_stream_reset(event: h2.events.StreamReset) -> None:
            if not _answered_then_reset(self.processor, event):
                upstream(event)

        processors[h2.events.StreamReset] = on_stream_reset

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    async def wait_lost(self, limit: float) -> None:
        """Wait until the transport is closed, aborting it after ``limit`` seconds.

        Closing a TLS transport only starts the TLS shutdown (close_notify both ways, up to
        asyncio's 30 s ``ssl_shutdown_timeout``); the socket underneath is closed when that
        ends. grpclib's ``Channel.close()`` returns at once, so a connection closed just before
        its loop stops was left open: an unclosed socket per TLS connection (a ResourceWarning
        in the TLS tests). Plaintext transports are gone after one loop iteration.
        """
        lost = self._lost
        if lost is None or lost.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(lost), limit)
        except TimeoutError:
            if isinstance(self._transport, asyncio.Transport):
                self._transport.abort()


def _answered_then_reset(processor: grpclib.protocol.EventsProcessor,
                         event: h2.events.StreamReset) -> bool:
    """True for RST_STREAM(NO_ERROR) after the server's complete answer, which is then kept.

    RFC 9113, 8.1: a server may send a complete response before the client sent its whole
    request and then ask it to stop sending with RST_STREAM(NO_ERROR); "clients MUST NOT
    discard responses as a result of receiving such a RST_STREAM". grpc-go does exactly that
    when a handler returns before the client half-closed (an Exec whose command exits without
    reading all of its stdin; a WriteRaw failing early). grpclib terminates the stream on any
    reset (``EventsProcessor.process_stream_reset``), so the buffered answer and its status
    were lost ("Stream reset by remote party, error_code: 0"). Here such a reset only stops
    our sending: a sender waiting for window wakes up and gets h2's StreamClosedError; the
    answer, trailers and status are read as usual. Any other reset goes to grpclib.
    """
    if not event.remote_reset or event.error_code != h2.errors.ErrorCodes.NO_ERROR:
        return False
    stream = processor.streams.get(event.stream_id)
    if stream is None or stream.trailers is None:
        return False  # no complete answer yet: the reset really ends the call
    stream.window_updated.set()
    return True


class _Channel(grpclib.client.Channel):
    def _protocol_factory(self) -> grpclib.protocol.H2Protocol:
        return _Protocol(grpclib.client.Handler(), self._config, self._h2_config)


@dataclass(frozen=True)
class WriteOutcome:
    bytes_written: int
    bytes_read: int
    sha256: str | None


class BridgeChannel:
    """One HTTP/2 connection (grpclib ``Channel``) to a ContainerService, driven from Trio.

    Create with :meth:`open` inside :func:`memoh_trio._bridge.asyncio_loop`; always
    :meth:`aclose` it (it is idempotent and safe under cancellation).
    """

    def __init__(
        self,
        loop: Any,
        channel: grpclib.client.Channel,
        target: str,
        metadata: Sequence[tuple[str, str]],
        connect_timeout: float,
    ) -> None:
        self._loop = loop
        self._channel: grpclib.client.Channel | None = channel
        self.target = target
        self._metadata = list(metadata)
        self._connect_timeout = connect_timeout

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        token: str | None = None,
        connect_timeout: float = 10.0,
        dial: bool = True,
    ) -> BridgeChannel:
        """Create the channel; with ``dial`` connect now (raises Unavailable on failure)."""
        loop = trio_asyncio.current_loop.get()
        if loop is None:
            raise RuntimeError("BridgeChannel.open() needs a running asyncio_loop()")
        target = f"{host}:{port}"
        config = grpclib.config.Configuration(
            http2_connection_window_size=CONNECTION_WINDOW,
            http2_stream_window_size=STREAM_WINDOW,
            ssl_target_name_override=server_hostname,
        )
        metadata = [("authorization", f"Bearer {token}")] if token else []

        async def make() -> grpclib.client.Channel:
            # No status-details codec: memoh-trio reads only the status and its message.
            return _Channel(host, port, ssl=ssl_context, config=config, codec=Codec(),
                            status_details_codec=None)

        channel = await loop.run_aio_coroutine(make())
        self = cls(loop, channel, target, metadata, connect_timeout)
        if dial:
            try:
                await loop.run_aio_coroutine(self._ensure_connected())
            except BaseException:
                await self.aclose()
                raise
        return self

    async def aclose(self) -> None:
        """Close the connection (idempotent; also works while cancelled)."""
        channel, self._channel = self._channel, None
        if channel is None:
            return
        protocol = getattr(channel, "_protocol", None)
        channel.close()
        # Let the transport's close callbacks run while the loop is still alive, and wait
        # (bounded) for a TLS shutdown to close the socket.
        with trio.CancelScope(shield=True):
            await trio.lowlevel.checkpoint()
            with contextlib.suppress(Exception):
                if isinstance(protocol, _Protocol):
                    await self._loop.run_aio_coroutine(protocol.wait_lost(CLOSE_TIMEOUT))
                await self._loop.synchronize()

    def close_nowait(self) -> None:
        """Start closing without waiting (the loop finishes it while it keeps running)."""
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    @property
    def closed(self) -> bool:
        return self._channel is None

    @property
    def connected(self) -> bool:
        ch = self._channel
        return ch is not None and bool(ch._connected)

    def _live_channel(self, method: str) -> grpclib.client.Channel:
        if self._channel is None:
            raise _errors.Unavailable(f"client for {self.target} is closed", method=method)
        return self._channel

    async def _ensure_connected(self, method: str = "") -> None:
        """asyncio side: dial now if not connected, bounded by the connect timeout."""
        channel = self._live_channel(method)
        if channel._connected:
            return
        try:
            await asyncio.wait_for(channel.__connect__(), self._connect_timeout)
        except TimeoutError:
            raise _errors.Unavailable(
                f"cannot connect to {self.target}: timed out after {self._connect_timeout:g} s",
                method=method,
            ) from None
        except (OSError, ssl.SSLError, EOFError) as exc:
            raise _errors.Unavailable(
                f"cannot connect to {self.target}: {_describe_os_error(exc)}", method=method
            ) from exc

    async def _wrapped(self, method: str, coro_fn: Callable[[], Awaitable[T]]) -> T:
        """asyncio side: dial if needed, run ``coro_fn()``, map errors."""
        try:
            await self._ensure_connected(method)
            return await coro_fn()
        except _errors.MemohError:
            raise
        except Exception as exc:
            mapped = map_error(exc, method, self.target)
            if mapped is exc:
                raise
            raise mapped from exc

    async def _call(self, method: str, coro_fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``coro_fn()`` on the asyncio loop (one crossing) with errors mapped."""
        self._live_channel(method)
        return cast(T, await self._loop.run_aio_coroutine(self._wrapped(method, coro_fn)))

    def _request(
        self, method: str, cardinality: grpclib.const.Cardinality, req: type[Any],
        rep: type[Any], rpc_timeout: float | None,
    ) -> grpclib.client.Stream[Any, Any]:
        return self._live_channel(method).request(
            _SERVICE + method, cardinality, req, rep, timeout=rpc_timeout, metadata=self._metadata
        )

    # -- unary -------------------------------------------------------------------------------

    async def unary(
        self, method: str, request: Any, reply_type: type[T], *, rpc_timeout: float | None
    ) -> T:
        async def go() -> T:
            unary = grpclib.const.Cardinality.UNARY_UNARY
            async with self._request(
                method, unary, type(request), reply_type, rpc_timeout
            ) as stream:
                await stream.send_message(request, end=True)
                reply = await stream.recv_message()
            if reply is None:
                raise _errors.Internal("server sent no reply", method=method)
            return cast(T, reply)

        return await self._call(method, go)

    # -- WriteRaw ----------------------------------------------------------------------------

    async def write_raw(
        self,
        path: str,
        source: SourceSpec,
        *,
        chunk_size: int,
        expected_size: int | None,
        hash_sha256: bool,
        on_sent: Callable[[int], None] | None,
        rpc_timeout: float | None,
    ) -> WriteOutcome:
        """Stream ``source`` into ``path`` with one crossing. See ``Client.write_raw``."""
        method = "WriteRaw"

        async def go() -> WriteOutcome:
            hasher = hashlib.sha256() if hash_sha256 else None
            reader = _Reader(source, chunk_size, hasher)
            total = 0
            try:
                try:
                    data = await reader.next()
                    total = len(data)
                    if expected_size is not None and total > expected_size:
                        raise SizeMismatch
                except (SourceFailure, SizeMismatch):
                    # Nothing sent yet: no stream, nothing created at the destination.
                    raise
                async with self._request(
                    method, grpclib.const.Cardinality.STREAM_UNARY, pb.WriteRawChunk,
                    pb.WriteRawResponse, rpc_timeout,
                ) as stream:

                    async def send(msg: Encoded | None, end: bool = False) -> bool:
                        """Send (``None``: end the stream); False if the server closed it.

                        A server that fails a WriteRaw (ENOSPC, NotFound...) answers with its
                        status and closes the stream while we may still be sending: h2 then
                        raises StreamClosedError on our next frame. The status is read below.
                        """
                        try:
                            if msg is None:
                                await stream.end()
                            else:
                                await stream.send_message(msg, end=end)
                        except h2.exceptions.StreamClosedError:
                            compat.mark_sending_ended(stream)
                            return False
                        return True

                    failure: BaseException | None = None
                    open_ = await send(Encoded(_wire.encode_write_raw_chunk(path, data)))
                    if open_ and on_sent is not None and data:
                        on_sent(len(data))
                    while open_ and data:
                        try:
                            data = await reader.next()
                            total += len(data)
                            if expected_size is not None and total > expected_size:
                                raise SizeMismatch
                            if not data and expected_size is not None and total != expected_size:
                                raise SizeMismatch
                        except (SourceFailure, SizeMismatch) as exc:
                            failure = exc
                            break
                        if data:
                            open_ = await send(Encoded(_wire.encode_write_raw_chunk("", data)))
                            if open_ and on_sent is not None:
                                on_sent(len(data))
                    if failure is not None:
                        await send(Encoded(_wire.encode_write_raw_chunk(abort=True)), end=True)
                        # The server answers ABORTED (or, if it ignores abort, OK): either way
                        # the caller learns about the source failure, not the status.
                        with contextlib.suppress(Exception):
                            await stream.recv_message()
                        raise failure
                    if open_:
                        await send(None)
                    # Closed early or not, the server's reply or status tells what happened
                    # (recv_message raises GRPCError for a non-OK status).
                    reply = await stream.recv_message()
            finally:
                await reader.aclose()
            if reply is None:
                raise _errors.Internal("server sent no reply", method=method)
            written = int(reply.bytes_written)
            if written != total:
                raise _errors.RPCError(
                    f"server wrote {written} bytes of {total} sent to {path!r}",
                    status=_errors.Status.DATA_LOSS, method=method,
                )
            return WriteOutcome(written, total, hasher.hexdigest() if hasher else None)

        try:
            return await self._call(method, go)
        except SizeMismatch:
            raise _errors.SourceChanged(
                f"source of {path!r} changed while it was read: expected {expected_size} bytes"
            ) from None
        except SourceFailure as exc:
            raise _errors.SourceReadError(
                f"cannot read the source of {path!r}: {exc.cause}"
            ) from exc.cause

    # -- ReadRaw -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def read_raw(
        self, path: str, *, rpc_timeout: float | None
    ) -> AsyncIterator[Pipe[bytes]]:
        """Yield a pipe the caller ``get()``s chunks from (None at the end, errors raised).

        The whole stream runs as one asyncio task (one crossing); no Trio nursery is involved,
        so the caller's own exceptions leave the block unwrapped.
        """
        method = "ReadRaw"
        pipe: Pipe[bytes] = Pipe(PIPE_CAPACITY)

        async def go() -> None:
            async with self._request(
                method, grpclib.const.Cardinality.UNARY_STREAM, pb.ReadRawRequest,
                pb.DataChunk, rpc_timeout,
            ) as stream:
                await stream.send_message(pb.ReadRawRequest(path=path), end=True)
                while True:
                    msg = await stream.recv_message()
                    if msg is None:
                        break
                    if msg.data and not await pipe.aput(bytes(msg.data)):
                        await stream.cancel()
                        return

        async def run() -> None:
            try:
                await self._wrapped(method, go)
            except Exception as exc:
                pipe.close(exc)
            else:
                pipe.close()

        self._live_channel(method)
        task = self._loop.create_task(run())
        try:
            yield pipe
        finally:
            pipe.abandon()
            if not task.done():
                task.cancel()
            with trio.CancelScope(shield=True), contextlib.suppress(BaseException):
                await trio_asyncio.run_aio_future(task)

    # -- Exec --------------------------------------------------------------------------------

    async def exec(
        self,
        first: pb.ExecInput,
        stdin: bytes | memoryview | Pipe[bytes] | None,
        on_output: Callable[[str, bytes], None],
        *,
        rpc_timeout: float | None,
    ) -> int:
        """Run a command; output goes to ``on_output``; returns the exit code.

        ``first`` carries the command alone: Memoh's server reads only command, work_dir, env
        and timeout from the first message and drops its stdin. ``stdin`` follows in messages
        of at most :data:`EXEC_STDIN_CHUNK` bytes.
        """
        method = "Exec"
        if len(bytes(first)) + GRPC_FRAMING > MAX_SEND_MESSAGE:
            raise _errors.InvalidArgument(
                f"the command is too long for one gRPC message ({len(first.command)} bytes; "
                f"servers refuse messages over {MAX_SEND_MESSAGE} bytes): send it as stdin",
                method=method,
            )

        async def go() -> int:
            async with self._request(
                method, grpclib.const.Cardinality.STREAM_STREAM, pb.ExecInput, pb.ExecOutput,
                rpc_timeout,
            ) as stream:
                if not stdin:
                    await stream.send_message(first, end=True)
                    return await _receive_exec(stream, on_output)
                await stream.send_message(first)
                return await _exec_with_stdin(stream, stdin, on_output)

        return await self._call(method, go)


#: Most stdin bytes per ExecInput message after the first (a message must stay below the
#: 4 MiB that grpc-go and grpcio accept by default; 1 MiB as for WriteRaw chunks).
EXEC_STDIN_CHUNK = 1024 * 1024
#: Largest message grpc-go and grpcio servers accept by default (with the 5-byte gRPC framing).
MAX_SEND_MESSAGE = 4 * 1024 * 1024
GRPC_FRAMING = 5


async def _receive_exec(
    stream: grpclib.client.Stream[Any, Any], on_output: Callable[[str, bytes], None]
) -> int:
    """asyncio side: hand the output to ``on_output`` until the end; return the exit code."""
    exit_code: int | None = None
    while True:
        msg = await stream.recv_message()
        if msg is None:
            break
        if msg.stream == pb.ExecOutputStream.EXIT:
            exit_code = int(msg.exit_code)
        elif msg.data:
            err = msg.stream == pb.ExecOutputStream.STDERR
            on_output("stderr" if err else "stdout", bytes(msg.data))
    if exit_code is None:
        raise _errors.Internal("exec stream ended without an exit status", method="Exec")
    return exit_code


async def _stdin_pieces(stdin: bytes | memoryview | Pipe[bytes]) -> AsyncIterator[bytes]:
    """asyncio side: ``stdin`` in pieces of at most EXEC_STDIN_CHUNK bytes."""
    if not isinstance(stdin, Pipe):
        view = memoryview(stdin).cast("B")
        for start in range(0, len(view), EXEC_STDIN_CHUNK):
            yield bytes(view[start : start + EXEC_STDIN_CHUNK])
        return
    while (data := await stdin.aget()) is not None:
        for start in range(0, len(data), EXEC_STDIN_CHUNK):
            yield data[start : start + EXEC_STDIN_CHUNK]


async def _send_stdin(
    stream: grpclib.client.Stream[Any, Any], stdin: bytes | memoryview | Pipe[bytes]
) -> None:
    """asyncio side: one ExecInput per piece of ``stdin``, then the end of the stream."""
    async for piece in _stdin_pieces(stdin):
        await stream.send_message(pb.ExecInput(stdin_data=piece))
    await stream.end()


async def _exec_with_stdin(
    stream: grpclib.client.Stream[Any, Any],
    stdin: bytes | memoryview | Pipe[bytes],
    on_output: Callable[[str, bytes], None],
) -> int:
    """asyncio side: send stdin beside receiving the output.

    A command may exit before it read all of its stdin: the server then answers in full and
    closes the stream (grpc-go: RST_STREAM(NO_ERROR), which :class:`_Protocol` lets end the
    stream without losing the answer); the rest of stdin is dropped and the answer counts. A
    failing stdin source cancels the call and its error is raised.
    """
    receiver = asyncio.current_task()
    assert receiver is not None
    failure: SourceFailure | None = None

    async def send() -> None:
        nonlocal failure
        try:
            await _send_stdin(stream, stdin)
        except h2.exceptions.StreamClosedError:
            pass  # the server has answered, or will: its answer tells what happened
        except SourceFailure as exc:
            failure = exc
            receiver.cancel()

    sender = asyncio.ensure_future(send())
    try:
        code = await _receive_exec(stream, on_output)
    except asyncio.CancelledError:
        if failure is not None:
            raise failure from None
        raise
    finally:
        if not sender.done():
            sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        if isinstance(stdin, Pipe):
            stdin.abandon()
    await end_sending(stream)
    return code


async def end_sending(stream: grpclib.client.Stream[Any, Any]) -> None:
    """asyncio side: end our half of a stream the server has answered in full.

    The stream ends normally if it can; if the server closed it already (RST_STREAM(NO_ERROR)
    after its answer) that is recorded, so grpclib goes on to read the status.
    """
    if compat.sending_ended(stream):
        return
    try:
        await stream.end()
    except h2.exceptions.StreamClosedError:
        compat.mark_sending_ended(stream)
