"""Every private name of grpclib, h2, hyperframe, asyncio and trio-asyncio the bridge relies on.

The bridge reaches past these libraries' public APIs in a few places (each for a measured cost or
a behaviour their public API does not offer; the modules using them say why). Upstream may rename
or change any of them in any release, so they are listed here, once, and
``tests/test_compat.py`` checks that each still exists and behaves as assumed; ``pyproject.toml``
pins the majors these were checked against (``grpclib<0.5``, ``h2<5``, ``hyperframe<7``,
``trio-asyncio<0.17``; asyncio's come with Python and are checked on each version the suite runs
on). Upgrading one of them: run that test first.

The client and the server read and write them only through the functions below (the server's
and the client's ``_protocol_factory`` overrides excepted: a subclass must use the name); the h2
patch (``_bridge/h2patch.py``) is listed in :data:`H2_NAMES`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpclib.client
import grpclib.config
import grpclib.protocol
import grpclib.server
import h2.config
import h2.connection
import h2.exceptions

#: (object, attribute) pairs the client side uses, with what for. Checked by the test.
CLIENT_NAMES: tuple[tuple[str, str, str], ...] = (
    ("grpclib.client.Channel", "_connected", "is the connection up (dial only when it is not)"),
    ("grpclib.client.Channel", "__connect__", "dial now, bounded by our connect timeout"),
    ("grpclib.client.Channel", "_protocol", "the H2Protocol, to wait until its socket closed"),
    ("grpclib.client.Channel", "_protocol_factory", "overridden: our protocol subclass"),
    ("grpclib.client.Channel", "_config", "read by our _protocol_factory"),
    ("grpclib.client.Channel", "_h2_config", "read by our _protocol_factory"),
    ("grpclib.protocol.Connection", "_connection", "the h2 connection, for h2patch and "
     "MAX_FRAME_SIZE"),
    ("grpclib.protocol.EventsProcessor", "processors", "event class -> handler: StreamReset is "
     "wrapped to keep an answer followed by RST_STREAM(NO_ERROR)"),
    ("grpclib.protocol.EventsProcessor", "streams", "stream id -> protocol Stream"),
    ("grpclib.client.Stream", "_end_done", "the client half-closed; set when the server closed "
     "the stream first, so grpclib reads the trailers instead of raising ProtocolError"),
)

#: Used by ``_bridge/server.py`` and ``_bridge/inbound.py``, through the functions below.
SERVER_NAMES: tuple[tuple[str, str, str], ...] = (
    ("grpclib.server.Server", "_protocol_factory", "what our protocol_for replaces (the "
     "acceptor calls it, with the connection's key)"),
    ("grpclib.server.Server", "__gc_step__", "called by our protocol_for, as upstream"),
    ("grpclib.server.Server", "_mapping", "read by our protocol_for"),
    ("grpclib.server.Server", "_codec", "read by our protocol_for"),
    ("grpclib.server.Server", "_status_details_codec", "read by our protocol_for"),
    ("grpclib.server.Server", "__dispatch__", "read by our protocol_for"),
    ("grpclib.server.Server", "_handlers", "our protocol_for registers its handler; close() "
     "and wait_closed() go through them (the server is never start()-ed)"),
    ("grpclib.server.Server", "_config", "read by our protocol_for"),
    ("grpclib.server.Server", "_h2_config", "read by our protocol_for"),
    ("grpclib.server.Stream", "_stream", "the protocol Stream: length prefix read before "
     "buffering a message"),
    ("grpclib.protocol.Connection", "ack", "replaced per server connection by a no-op: the "
     "server opens its receive windows itself"),
    ("grpclib.protocol.Connection", "_connection", "the h2 connection, to open a stream's "
     "receive window"),
    ("grpclib.server.Stream", "_codec", "decode a body read by hand"),
    ("grpclib.server.Stream", "_recv_type", "decode a body read by hand"),
)

#: asyncio's, used by ``_bridge/server.py``.
ASYNCIO_NAMES: tuple[tuple[str, str, str], ...] = (
    ("asyncio.selector_events._SelectorSocketTransport", "max_size", "bytes read per readiness "
     "event (256 KiB), raised for the server's connections"),
)

#: Used by ``_bridge/h2patch.py``.
H2_NAMES: tuple[tuple[str, str, str], ...] = (
    ("h2.connection.H2Connection", "_data_to_send", "the outbound buffer, appended to directly"),
    ("h2.connection.H2Connection", "_prepare_for_sending", "overridden: copy-saving DATA path"),
    ("hyperframe.frame.Frame", "_body_repr", "DataFrame gets a cheap one"),
    ("hyperframe.frame.DataFrame", "serialize_padding_data", "read by the cheap _body_repr"),
    ("hyperframe.frame", "_STRUCT_HBBBL", "the frame header layout h2patch packs itself"),
    ("grpclib.client", "send_message", "grpclib.stream's, as the client imports it: replaced "
     "(a message in pieces is not joined)"),
    ("grpclib.server", "send_message", "the same, as the server imports it"),
)


def h2_connection(protocol: grpclib.protocol.H2Protocol) -> h2.connection.H2Connection:
    """The h2 connection under a grpclib protocol (``Connection._connection``)."""
    conn: h2.connection.H2Connection = protocol.connection._connection
    return conn


def plain_socket_fd(transport: asyncio.BaseTransport) -> int:
    """The socket an asyncio transport writes its bytes to as they are (plain TCP, not TLS),
    or -1. A TLS transport answers ``get_extra_info("socket")`` with the socket under it, so
    it is told apart by its TLS extras. Public API only: listed here for what it assumes."""
    if (transport.get_extra_info("sslcontext") is not None
            or transport.get_extra_info("ssl_object") is not None):
        return -1
    sock = transport.get_extra_info("socket")
    return -1 if sock is None else int(sock.fileno())


def is_connected(channel: grpclib.client.Channel) -> bool:
    return bool(channel._connected)


async def connect(channel: grpclib.client.Channel) -> None:
    """Dial now (grpclib otherwise dials inside the first call, without a bound)."""
    await channel.__connect__()


def channel_protocol(channel: grpclib.client.Channel) -> Any:
    """The channel's H2Protocol, or None before it connected."""
    return getattr(channel, "_protocol", None)


def protocol_args(channel: grpclib.client.Channel) -> tuple[Any, Any]:
    """What ``Channel._protocol_factory`` passes to ``H2Protocol`` besides the handler."""
    return channel._config, channel._h2_config


def stream_processors(protocol: grpclib.protocol.H2Protocol) -> dict[type, Any]:
    """h2 event class -> grpclib's handler for it (``EventsProcessor.processors``)."""
    processors: dict[type, Any] = protocol.processor.processors
    return processors


def protocol_stream(protocol: grpclib.protocol.H2Protocol, stream_id: int
                    ) -> grpclib.protocol.Stream | None:
    """The protocol-level stream with this id, while a call holds it."""
    stream: grpclib.protocol.Stream | None = protocol.processor.streams.get(stream_id)
    return stream


def sending_ended(stream: grpclib.client.Stream[Any, Any]) -> bool:
    return bool(stream._end_done)


def mark_sending_ended(stream: grpclib.client.Stream[Any, Any]) -> None:
    """Record that our side of ``stream`` is over because the server closed it.

    grpclib reads the trailers (the status) only after the client ended its stream and raises
    ``ProtocolError('Outgoing stream was not ended')`` otherwise; after the server's
    RST_STREAM(NO_ERROR) h2 refuses the END_STREAM we would send, so it is recorded instead.
    """
    stream._end_done = True


# -- server ---------------------------------------------------------------------------------


def new_server_handler(server: grpclib.server.Server
                       ) -> tuple[grpclib.server.Handler, grpclib.config.Configuration,
                                  h2.config.H2Configuration]:
    """What ``Server._protocol_factory`` (0.4.x) passes to ``H2Protocol``: a new connection
    handler, registered with the server as upstream does (so that ``close()`` cancels its
    calls), and the server's configurations."""
    server.__gc_step__()
    handler = grpclib.server.Handler(
        server._mapping, server._codec, server._status_details_codec, server.__dispatch__,
    )
    server._handlers.add(handler)
    return handler, server._config, server._h2_config


def server_h2_stream(stream: grpclib.server.Stream[Any, Any]) -> grpclib.protocol.Stream:
    """The protocol-level stream under a server call (its ``recv_data(n)`` reads raw bytes)."""
    h2_stream: grpclib.protocol.Stream = stream._stream
    return h2_stream


def server_connection(stream: grpclib.server.Stream[Any, Any]) -> grpclib.protocol.Connection:
    """The connection a server call came on (the protocol stream's public ``connection``)."""
    connection: grpclib.protocol.Connection = stream._stream.connection
    return connection


def server_handlers(server: grpclib.server.Server) -> list[grpclib.server.Handler]:
    """The server's connection handlers (``Server._handlers``), to close them."""
    return list(server._handlers)


def take_over_inbound_windows(protocol: grpclib.protocol.H2Protocol) -> None:
    """Stop grpclib from acknowledging received data (``Connection.ack``, called as a stream's
    buffer is read): the server opens its receive windows itself (see ``_bridge/budget``)."""
    protocol.connection.ack = _no_ack  # type: ignore[method-assign]


def _no_ack(stream_id: int, size: int) -> None:
    pass


def open_stream_window(h2_stream: grpclib.protocol.Stream, increment: int) -> bool:
    """Let the peer send ``increment`` more bytes on this stream (WINDOW_UPDATE, flushed);
    False when the stream is already closed (nothing more will come on it anyway)."""
    conn: h2.connection.H2Connection = h2_stream.connection._connection
    try:
        conn.increment_flow_control_window(increment, stream_id=h2_stream.id)
    except (KeyError, h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
        return False
    h2_stream.connection.flush()
    return True


def drop_server_handler(server: grpclib.server.Server,
                        handler: grpclib.protocol.AbstractHandler) -> None:
    """Forget a closed connection's handler (``Server._handlers``; grpclib drops it only on a
    later connection's ``__gc_step__``)."""
    server._handlers.discard(handler)


def decode_request(stream: grpclib.server.Stream[Any, Any], body: bytes) -> Any:
    """Decode a request message read by hand, as grpclib's ``recv_message`` would."""
    return stream._codec.decode(body, stream._recv_type)


def set_read_size(transport: asyncio.BaseTransport, size: int) -> bool:
    """Let asyncio's socket transport read up to ``size`` bytes per readiness event (its class
    attribute ``max_size``); False, and nothing changed, for a transport without it (TLS)."""
    if not hasattr(transport, "max_size"):
        return False
    transport.max_size = size
    return True
