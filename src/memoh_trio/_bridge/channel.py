"""grpclib client channel behind plain Trio functions: :class:`BridgeChannel`.

Every public coroutine of :class:`BridgeChannel` is Trio-flavoured and crosses into asyncio exactly
once (``loop.run_aio_coroutine``): a unary call is one crossing, and so is a whole WriteRaw stream
(:mod:`.upload`), an Exec (:mod:`.execute`) and a ReadRaw. Errors are mapped at this edge
(:mod:`.errors`). The grpclib internals used here go through :mod:`.compat`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

# trio_asyncio is imported before grpclib by the package's __init__ (it must patch asyncio first).
import grpclib.client
import grpclib.config
import grpclib.const
import grpclib.protocol
import h2.errors
import h2.events
import h2.settings
import trio
import trio_asyncio

from .. import _errors
from .._proto import mcpcontainer as pb
from . import compat, download, execute, h2patch
from .codec import Codec
from .errors import SizeMismatch, SourceFailure, describe_os_error, map_error
from .pipe import PIPE_CAPACITY, Pipe
from .reader import SourceSpec
from .upload import Upload, WriteOutcome

T = TypeVar("T")

_SERVICE = "/mcpcontainer.ContainerService/"

# Inbound HTTP/2 flow-control windows of the client (they bound ReadRaw/Exec output in flight).
# 4 MiB per stream and 16 MiB per connection: measured in benchmarks (see the report); larger
# windows did not read faster on loopback, smaller ones (64 KiB) cut ReadRaw throughput sharply.
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
# Largest DATA frame the client accepts (HTTP/2 default is 16 KiB; the maximum 16 MiB - 1).
MAX_INBOUND_FRAME = 1024 * 1024

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
            if not answered_then_reset(self, event):
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


def answered_then_reset(protocol: grpclib.protocol.H2Protocol,
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
    stream = compat.protocol_stream(protocol, event.stream_id)
    if stream is None or stream.trailers is None:
        return False  # no complete answer yet: the reset really ends the call
    stream.window_updated.set()
    return True


class _Channel(grpclib.client.Channel):
    def _protocol_factory(self) -> grpclib.protocol.H2Protocol:
        return _Protocol(grpclib.client.Handler(), *compat.protocol_args(self))


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
        h2patch.install()
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
        protocol = compat.channel_protocol(channel)
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

    def _live_channel(self, method: str) -> grpclib.client.Channel:
        if self._channel is None:
            raise _errors.Unavailable(f"client for {self.target} is closed", method=method)
        return self._channel

    async def _ensure_connected(self, method: str = "") -> None:
        """asyncio side: dial now if not connected, bounded by the connect timeout."""
        channel = self._live_channel(method)
        if compat.is_connected(channel):
            return
        try:
            await asyncio.wait_for(compat.connect(channel), self._connect_timeout)
        except TimeoutError:
            raise _errors.Unavailable(
                f"cannot connect to {self.target}: timed out after {self._connect_timeout:g} s",
                method=method,
            ) from None
        except (OSError, ssl.SSLError, EOFError) as exc:
            raise _errors.Unavailable(
                f"cannot connect to {self.target}: {describe_os_error(exc)}", method=method
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
        upload = Upload(path, source, chunk_size=chunk_size, expected_size=expected_size,
                        hash_sha256=hash_sha256, on_sent=on_sent)
        open_stream = functools.partial(
            self._request, method, grpclib.const.Cardinality.STREAM_UNARY, pb.WriteRawChunk,
            pb.WriteRawResponse, rpc_timeout,
        )
        try:
            return await self._call(method, functools.partial(upload.run, open_stream))
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
        open_stream = functools.partial(
            self._request, method, grpclib.const.Cardinality.UNARY_STREAM, pb.ReadRawRequest,
            pb.DataChunk, rpc_timeout)

        async def run() -> None:
            try:
                await self._wrapped(method, functools.partial(download.pump, open_stream, path,
                                                              pipe))
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
        stdin: execute.Stdin | None,
        on_output: Callable[[str, bytes], None],
        *,
        rpc_timeout: float | None,
    ) -> int:
        """Run a command; output goes to ``on_output``; returns the exit code.

        ``first`` carries the command alone; ``stdin`` follows in later messages (see
        :mod:`.execute`). Raises SourceFailure when a stdin pipe's source failed.
        """
        method = "Exec"
        execute.check_first(first)

        async def go() -> int:
            async with self._request(
                method, grpclib.const.Cardinality.STREAM_STREAM, pb.ExecInput, pb.ExecOutput,
                rpc_timeout,
            ) as stream:
                return await execute.run_exec(stream, first, stdin, on_output)

        return await self._call(method, go)
