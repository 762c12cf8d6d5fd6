"""grpclib side of the memoh-trio server: ContainerService handlers and the server lifecycle.

The handlers run on the trio-asyncio loop. File operations are the synchronous functions of
:mod:`memoh_trio._fs`, called directly (WriteRaw and ReadRaw chunks never cross to Trio); calls
that can take long (recursive ListDir or DeleteFile, ReadFile) go to a worker thread. Exec crosses
to Trio once per call (:func:`memoh_trio._exec.run_exec`).

Things grpclib does not do and this module adds:

* a per-message size limit, checked on the 5-byte gRPC prefix *before* the message is buffered
  (``max_message_size`` → RESOURCE_EXHAUSTED);
* a larger HTTP/2 ``SETTINGS_MAX_FRAME_SIZE`` (grpclib advertises h2's 16 KiB default);
* bearer-token checking in a ``RecvRequest`` event hook, before any handler runs;
* its own accept loop (:mod:`.accept`), which keeps serving when descriptors run out;
* one budget for the bytes in flight across all calls, which the receive windows follow
  (:mod:`.budget`), and memory given back after a burst or a lost connection;
* graceful shutdown that cancels in-flight calls (their temporary files are discarded) and
  closes the connections.

Request messages are read by :mod:`.inbound`; the bodies of WriteRaw and Exec are in
:mod:`.server_streams`. The grpclib, h2 and asyncio internals used here go through :mod:`.compat`.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import ssl
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import grpclib.const
import grpclib.events
import grpclib.protocol
import grpclib.server
import trio
import trio_asyncio
from grpclib.config import Configuration
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol
from h2.events import DataReceived
from h2.settings import SettingCodes

from .. import _fs, _wire
from .._admission import Admission, connection_cap
from .._budget import DEFAULT_BUDGET
from .._errors import Status
from .._paths import PathError
from .._proto.mcpcontainer import (
    ContainerServiceBase,
    DataChunk,
    DeleteFileRequest,
    DeleteFileResponse,
    ExecInput,
    ExecOutput,
    FileEntry,
    ListDirRequest,
    ListDirResponse,
    MkdirRequest,
    MkdirResponse,
    ReadFileRequest,
    ReadFileResponse,
    ReadRawRequest,
    RenameRequest,
    RenameResponse,
    StatRequest,
    StatResponse,
    WriteFileRequest,
    WriteFileResponse,
    WriteRawChunk,
    WriteRawResponse,
)
from . import (
    asyncio_loop,
    compat,
    h2patch,
    server_streams,
    threads,
)
from .accept import Acceptor
from .budget import STREAM_WINDOW, InflightBudget
from .codec import Codec, Encoded
from .inbound import GStream, Inbound, grpc_error

_T = TypeVar("_T")

#: ReadRaw chunk size (Memoh's Go server uses 64 KiB; see the report for the measurement).
READ_RAW_CHUNK = 256 * 1024
#: Largest socket read of the server's transport (see _FramedH2Protocol.connection_made).
READ_SIZE = 1024 * 1024
#: Grace period for in-flight calls to unwind at shutdown before connections are cut.
SHUTDOWN_GRACE = 5.0

_SERVICE = "/mcpcontainer.ContainerService/"


class _FramedH2Protocol(H2Protocol):
    """grpclib's protocol, also advertising a larger SETTINGS_MAX_FRAME_SIZE, and reporting its
    connection's life to the :class:`~.accept.Acceptor` that accepted it."""

    max_frame_size = 16384
    acceptor: Acceptor | None = None
    key = -1
    server: _Server | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.acceptor is not None:
            self.acceptor.made(self.key, transport, self.connection)
        self._ack_on_arrival()
        # asyncio's socket transport reads at most 256 KiB per readiness event. Reading up to
        # 1 MiB means a quarter of the event-loop rounds per megabyte: 2 x 128 MiB from the
        # memoh-trio client took 1.32 s instead of 1.63 s (medians of 3, interleaved).
        compat.set_read_size(transport, READ_SIZE)
        h2_conn = compat.h2_connection(self)
        h2patch.adopt(h2_conn)
        if self.max_frame_size != 16384:
            h2_conn.update_settings({SettingCodes.MAX_FRAME_SIZE: self.max_frame_size})
            # h2 applies a new local MAX_FRAME_SIZE to its frame parser only at the start of a
            # receive_data() call: a SETTINGS ACK followed by a big DATA frame in the same read
            # is then refused as FRAME_SIZE_ERROR and the connection dies. Accept the larger
            # frames from now on (a peer may not send them before its ACK anyway).
            h2_conn.max_inbound_frame_size = self.max_frame_size
            self.connection.flush()

    def _ack_on_arrival(self) -> None:
        """Acknowledge the connection's window as data arrives, and never a stream's (the
        handlers open those as the budget allows; see :mod:`.budget`)."""
        compat.take_over_inbound_windows(self)
        h2_conn = compat.h2_connection(self)
        processors = compat.stream_processors(self)
        process_data = processors[DataReceived]
        threshold = max(1, self.config.http2_connection_window_size // 2)
        unacked = 0

        def on_data(event: DataReceived) -> None:
            nonlocal unacked
            process_data(event)
            unacked += event.flow_controlled_length or 0
            if unacked >= threshold:
                h2_conn.increment_flow_control_window(unacked)
                unacked = 0  # grpclib flushes once the events of this read are processed

        processors[DataReceived] = on_data

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self.acceptor is not None:
            self.acceptor.lost(self.key, self.connection)
        if self.server is not None:
            self.server.forget(self.handler)


class _Server(grpclib.server.Server):
    """grpclib Server that builds :class:`_FramedH2Protocol` and tracks its connections.

    It is never ``start()``-ed: connections come from an :class:`~.accept.Acceptor`, which calls
    :meth:`protocol_for`; :meth:`close` and :meth:`wait_closed` therefore deal with the
    connection handlers only (grpclib's also close an asyncio server, which there is none of).
    """

    def __init__(self, handlers: list[Any], *, config: Configuration,
                 max_frame_size: int) -> None:
        super().__init__(handlers, config=config, codec=Codec(), status_details_codec=None)
        self._max_frame_size = max_frame_size
        self.protocols: weakref.WeakSet[H2Protocol] = weakref.WeakSet()
        self.acceptor: Acceptor | None = None
        self._forgetting: set[asyncio.Future[None]] = set()
        #: called once a lost connection's calls are all over (the server trims the heap).
        self.on_forgotten: Callable[[], None] | None = None

    def protocol_for(self, key: int) -> H2Protocol:
        # grpclib.server.Server._protocol_factory (0.4.x) with our protocol class.
        proto = _FramedH2Protocol(*compat.new_server_handler(self))
        proto.max_frame_size = self._max_frame_size
        proto.acceptor = self.acceptor
        proto.key = key
        proto.server = self
        self.protocols.add(proto)
        return proto

    def forget(self, handler: grpclib.protocol.AbstractHandler) -> None:
        """Drop a lost connection's handler once its calls are over.

        grpclib keeps a connection's handler, and the handler each call's stream, until a later
        connection or call happens to collect them: the unread data of 35 clients killed in the
        middle of 16 MiB uploads stayed in memory (435 MB) after they were gone.
        """
        if not isinstance(handler, grpclib.server.Handler):
            return

        async def collect() -> None:
            await handler.wait_closed()
            if handler.check_closed():
                compat.drop_server_handler(self, handler)
            if self.on_forgotten is not None:
                self.on_forgotten()

        task = asyncio.ensure_future(collect())
        self._forgetting.add(task)
        task.add_done_callback(self._forgetting.discard)

    def close(self) -> None:
        for handler in compat.server_handlers(self):
            handler.close()

    async def wait_closed(self) -> None:
        handlers = compat.server_handlers(self)
        if handlers:
            await asyncio.wait({asyncio.ensure_future(h.wait_closed()) for h in handlers})

    def abort_connections(self) -> None:
        for proto in list(self.protocols):
            conn = getattr(proto, "connection", None)
            if conn is not None:
                conn.close()


class ContainerService(ContainerServiceBase):  # type: ignore[misc]
    """ContainerService over a root directory fd.

    The generated base class's ``__mapping__`` is replaced: handlers get the raw grpclib stream
    so that message sizes are checked before buffering and errors are mapped in one place.
    """

    def __init__(self, root_fd: int, *, max_message_size: int,
                 budget: int = DEFAULT_BUDGET,
                 hooks: _fs.ServerHooks | None = None, durable: bool = False,
                 direct_io: bool = False, allow_exec: bool = True) -> None:
        self._root_fd = root_fd
        self._allow_exec = allow_exec
        self.budget = InflightBudget(budget)
        self._inbound = Inbound(max_message_size, self.budget)
        self._hooks = hooks
        self._durable = durable
        self._direct_io = direct_io
        #: uploads in progress (discarded at shutdown if their handler did not get to it).
        self.writers: set[_fs.RawWriter] = set()
        #: told of every call that reached its handler (the token check passed).
        self.on_call: Callable[[GStream], None] | None = None

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    async def _offload(fn: Callable[..., _T], *args: Any) -> _T:
        return await threads.run(fn, *args)

    def _handler(self, fn: Callable[[GStream], Awaitable[None]],
                 cardinality: grpclib.const.Cardinality, request: type, reply: type,
                 ) -> grpclib.const.Handler:
        async def run(stream: GStream) -> None:
            # Only a call past the token check gets here: its connection is trusted.
            if self.on_call is not None:
                self.on_call(stream)
            self._inbound.open_lease(stream)
            try:
                await fn(stream)
            except (PathError, OSError, UnicodeError) as exc:
                status, message = _fs.status_for(exc)
                raise grpc_error(status, message) from None
            finally:
                self._inbound.close_lease(stream)  # the call's messages are done with

        return grpclib.const.Handler(run, cardinality, request, reply)

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        c = grpclib.const.Cardinality
        return {
            _SERVICE + "ReadFile": self._handler(
                self._rpc_read_file, c.UNARY_UNARY, ReadFileRequest, ReadFileResponse),
            _SERVICE + "WriteFile": self._handler(
                self._rpc_write_file, c.UNARY_UNARY, WriteFileRequest, WriteFileResponse),
            _SERVICE + "ListDir": self._handler(
                self._rpc_list_dir, c.UNARY_UNARY, ListDirRequest, ListDirResponse),
            _SERVICE + "Stat": self._handler(
                self._rpc_stat, c.UNARY_UNARY, StatRequest, StatResponse),
            _SERVICE + "Mkdir": self._handler(
                self._rpc_mkdir, c.UNARY_UNARY, MkdirRequest, MkdirResponse),
            _SERVICE + "Rename": self._handler(
                self._rpc_rename, c.UNARY_UNARY, RenameRequest, RenameResponse),
            _SERVICE + "Exec": self._handler(
                self._rpc_exec, c.STREAM_STREAM, ExecInput, ExecOutput),
            _SERVICE + "ReadRaw": self._handler(
                self._rpc_read_raw, c.UNARY_STREAM, ReadRawRequest, DataChunk),
            _SERVICE + "WriteRaw": self._handler(
                self._rpc_write_raw, c.STREAM_UNARY, WriteRawChunk, WriteRawResponse),
            _SERVICE + "DeleteFile": self._handler(
                self._rpc_delete_file, c.UNARY_UNARY, DeleteFileRequest, DeleteFileResponse),
        }

    # ------------------------------------------------------------------ unary calls

    @staticmethod
    def _entry(entry: _fs.Entry) -> FileEntry:
        return FileEntry(path=entry.path, is_dir=entry.is_dir, size=entry.size,
                         mode=entry.mode, mod_time=entry.mod_time)

    async def _rpc_read_file(self, stream: GStream) -> None:
        req = await self._inbound.one(stream)
        content, total, binary = await self._offload(
            _fs.read_file, self._root_fd, req.path, req.line_offset, req.n_lines)
        await stream.send_message(
            ReadFileResponse(content=content, total_lines=total, binary=binary))

    async def _rpc_write_file(self, stream: GStream) -> None:
        req = await self._inbound.one(stream)
        _fs.write_file(self._root_fd, req.path, req.content, durable=self._durable)
        await stream.send_message(WriteFileResponse())

    async def _rpc_list_dir(self, stream: GStream) -> None:
        req = await self._inbound.one(stream)
        entries = await self._offload(_fs.list_dir, self._root_fd, req.path, req.recursive)
        await stream.send_message(ListDirResponse(entries=[self._entry(e) for e in entries]))

    async def _rpc_stat(self, stream: GStream) -> None:
        req = await self._inbound.one(stream)
        entry = _fs.stat(self._root_fd, req.path)
        await stream.send_message(StatResponse(entry=self._entry(entry)))

    async def _rpc_mkdir(self, stream: GStream) -> None:
        req = await self._inbound.one(stream)
        _fs.mkdir(self._root_fd, req.path)
        await stream.send_message(MkdirResponse())

    async def _rpc_rename(self, stream: GStream) -> None:
        req = await self._inbound.one(stream)
        if not req.old_path or not req.new_path:
            raise grpc_error(Status.INVALID_ARGUMENT, "old_path and new_path are required")
        _fs.rename(self._root_fd, req.old_path, req.new_path)
        await stream.send_message(RenameResponse())

    async def _rpc_delete_file(self, stream: GStream) -> None:
        req = await self._inbound.one(stream)
        if req.recursive:
            await self._offload(_fs.delete, self._root_fd, req.path, True)
        else:
            _fs.delete(self._root_fd, req.path, False)
        await stream.send_message(DeleteFileResponse())

    # ------------------------------------------------------------------ streams

    async def _rpc_read_raw(self, stream: GStream) -> None:
        req = await self._inbound.one(stream)
        fd = _fs.open_regular(self._root_fd, req.path)
        lease = self._inbound.lease(stream)
        lease.release_all()  # the request is read
        try:
            while True:
                # A chunk read from the file counts in the budget until HTTP/2 took it.
                await lease.take(READ_RAW_CHUNK)
                data = os.read(fd, READ_RAW_CHUNK)
                if not data:
                    break
                await stream.send_message(Encoded(_wire.encode_data_chunk_head(len(data)), data))
                lease.release_all()
        finally:
            os.close(fd)

    async def _rpc_write_raw(self, stream: GStream) -> None:
        await server_streams.write_raw(stream, self._inbound, self._root_fd, self.writers,
                                       hooks=self._hooks, durable=self._durable,
                                       direct=self._direct_io)

    async def _rpc_exec(self, stream: GStream) -> None:
        if not self._allow_exec:
            raise grpc_error(Status.UNIMPLEMENTED,
                             "Exec is disabled on this server (memoh-trio serve --no-exec)")
        await server_streams.exec_call(stream, self._inbound, self._root_fd)


def _auth_hook(
    token: str,
) -> Callable[[grpclib.events.RecvRequest], Coroutine[Any, Any, None]]:
    import hmac

    expected = f"Bearer {token}".encode()

    async def check(event: grpclib.events.RecvRequest) -> None:
        got = event.metadata.get("authorization")
        if not isinstance(got, str) or not hmac.compare_digest(got.encode(), expected):
            raise GRPCError(grpclib.const.Status.UNAUTHENTICATED,
                            "missing or invalid bearer token")

    return check


async def _build(service: ContainerService, sock: socket.socket, *, token: str | None,
                 ssl_context: ssl.SSLContext | None, config: Configuration,
                 max_frame_size: int) -> _Server:
    server = _Server([service], config=config, max_frame_size=max_frame_size)
    if token is not None:
        grpclib.events.listen(server, grpclib.events.RecvRequest, _auth_hook(token))
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = connection_cap(soft if soft != resource.RLIM_INFINITY else 2**20)
    acceptor = Acceptor(sock, Admission(cap), server.protocol_for, ssl_context)
    server.acceptor = acceptor
    service.on_call = lambda stream: acceptor.trust(compat.server_connection(stream))
    server.on_forgotten = service.budget.trim_soon
    return server


async def _stop(server: _Server, service: ContainerService) -> None:
    server.close()
    try:
        await asyncio.wait_for(server.wait_closed(), SHUTDOWN_GRACE)
    except TimeoutError:
        pass
    finally:
        server.abort_connections()
        service.budget.close()
        for writer in list(service.writers):
            writer.discard()
        service.writers.clear()


async def run_server(
    sock: socket.socket,
    root_fd: int,
    address: object,
    *,
    token: str | None,
    allow_exec: bool,
    ssl_context: ssl.SSLContext | None,
    max_message_size: int,
    hooks: _fs.ServerHooks | None,
    durable: bool,
    direct_io: bool,
    window_size: int,
    max_frame_size: int,
    memory_budget: int,
    task_status: trio.TaskStatus[Any],
) -> None:
    """Serve on the listening ``sock`` until cancelled (Trio function).

    Reports ``address`` through ``task_status`` once connections are accepted. On cancellation
    the listener is closed, in-flight calls are cancelled (uploads discard their temporary files),
    connections are closed, then this returns (re-raising the cancellation).
    """
    service = ContainerService(root_fd, max_message_size=max_message_size,
                               budget=memory_budget, hooks=hooks,
                               durable=durable, direct_io=direct_io, allow_exec=allow_exec)
    # Streams start with HTTP/2's default window and get more as the budget allows (.budget).
    config = Configuration(http2_connection_window_size=window_size,
                           http2_stream_window_size=STREAM_WINDOW)
    h2patch.install()
    async with asyncio_loop():
        server = await trio_asyncio.aio_as_trio(_build)(
            service, sock, token=token, ssl_context=ssl_context, config=config,
            max_frame_size=max_frame_size,
        )
        assert server.acceptor is not None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio_asyncio.aio_as_trio(server.acceptor.run))
                task_status.started(address)
        finally:
            with trio.CancelScope(shield=True):
                await trio_asyncio.aio_as_trio(_stop)(server, service)
