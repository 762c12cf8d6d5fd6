"""The h2/hyperframe fixes of _bridge.h2patch against the upstream code they replace.

The DATA-frame repr must be the string hyperframe's ``Frame._body_repr`` builds, and a patched
connection must put on the wire exactly the bytes a plain h2 connection does.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any
from unittest import mock

import h2.config
import h2.connection
import h2.exceptions
import h2.settings
import pytest
from hyperframe.frame import DataFrame, Frame, PingFrame, SettingsFrame, WindowUpdateFrame
from hypothesis import given, settings
from hypothesis import strategies as st

from memoh_trio._bridge import h2patch

MAX_FRAME = 2**20


@pytest.fixture(autouse=True)
def _repr_fix_installed() -> None:
    """The fix is installed when a channel or server opens; these tests use it directly."""
    h2patch.install()


MAX_WINDOW = 2**31 - 1


def _payload(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that are not all alike (a misplaced byte shows)."""
    pattern = bytes((i * 7 + seed) & 0xFF for i in range(256))
    return (pattern * (size // 256 + 1))[:size]


# ----------------------------------------------------------------------------------------------
# 1. The DATA-frame repr


def _upstream_body_repr(frame: DataFrame) -> str:
    """What hyperframe shows for a frame: its ``Frame._body_repr`` on a copy of the frame."""
    copy = DataFrame(frame.stream_id, data=bytes(frame.data), pad_length=frame.pad_length)
    copy.flags = frame.flags
    return Frame._body_repr(copy)


def test_repr_fix_installed() -> None:
    h2patch.install()
    assert DataFrame.__dict__["_body_repr"] is h2patch._data_body_repr
    # hyperframe itself has no DataFrame-specific repr: the fallback is Frame's.
    assert Frame.__dict__["_body_repr"] is not h2patch._data_body_repr


def test_repr_fix_installed_when_a_channel_opens_not_at_import() -> None:
    """Importing memoh-trio leaves hyperframe alone; opening a client channel (or a server)
    installs the fix."""
    script = """
import trio
import memoh_trio
from memoh_trio._bridge import asyncio_loop, channel
import grpclib.protocol
from hyperframe.frame import DataFrame
assert "_body_repr" not in DataFrame.__dict__, "installed at import"
assert grpclib.protocol.Stream.send_data.__module__ == "grpclib.protocol", "installed at import"
import grpclib.client, grpclib.server, grpclib.stream
assert grpclib.client.send_message is grpclib.stream.send_message, "installed at import"
assert grpclib.server.send_message is grpclib.stream.send_message, "installed at import"
async def main() -> None:
    async with asyncio_loop():
        ch = await channel.BridgeChannel.open("127.0.0.1", 9, dial=False)
        await ch.aclose()
trio.run(main)
assert "_body_repr" in DataFrame.__dict__, "not installed by BridgeChannel.open"
assert grpclib.protocol.Stream.send_data.__module__ != "grpclib.protocol", "not installed"
assert grpclib.client.send_message is not grpclib.stream.send_message, "not installed"
assert grpclib.server.send_message is not grpclib.stream.send_message, "not installed"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr


@pytest.mark.parametrize(
    ("data", "flags", "pad_length", "body"),
    [
        (b"", (), 0, "None"),
        (b"hello", (), 0, "<hex:68656c6c6f>"),
        (bytes(range(10)), (), 0, "<hex:00010203040506070809>"),
        (bytes(range(11)), (), 0, "<hex:00010203040506070809...>"),
        (bytes(range(1, 5)), ("PADDED",), 3, "<hex:0301020304000000>"),
        (b"", ("PADDED",), 0, "<hex:00>"),
        (b"\xff" * 9, ("PADDED",), 0, "<hex:00ffffffffffffffffff>"),
        (b"\xff" * 9, ("PADDED",), 1, "<hex:01ffffffffffffffffff...>"),
        (b"x" * (1 << 20), ("END_STREAM",), 0, "<hex:78787878787878787878...>"),
    ],
)
def test_data_frame_repr_known_values(
    data: bytes, flags: Sequence[str], pad_length: int, body: str
) -> None:
    frame = DataFrame(3, data=data, pad_length=pad_length)
    for flag in flags:
        frame.flags.add(flag)
    assert frame._body_repr() == body == _upstream_body_repr(frame)
    assert repr(frame) == f"DataFrame(stream_id=3, flags={frame.flags!r}): {body}"


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=24),
        st.integers(0, 70000).map(_payload),
    ),
    padded=st.booleans(),
    end_stream=st.booleans(),
    pad_length=st.integers(0, 255),
    as_view=st.booleans(),
)
def test_data_frame_repr_matches_upstream(
    data: bytes, padded: bool, end_stream: bool, pad_length: int, as_view: bool
) -> None:
    frame = DataFrame(1, data=data, pad_length=pad_length)
    if as_view:  # as h2 sends it when given a memoryview (hyperframe annotates bytes only)
        frame.data = memoryview(data)  # type: ignore[assignment]
    if padded:
        frame.flags.add("PADDED")
    if end_stream:
        frame.flags.add("END_STREAM")
    assert frame._body_repr() == _upstream_body_repr(frame)
    assert repr(frame).endswith(": " + _upstream_body_repr(frame))


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=40), pad_length=st.one_of(st.none(), st.integers(0, 255)))
def test_parsed_data_frame_repr_matches_upstream(data: bytes, pad_length: int | None) -> None:
    # h2 builds the repr of frames it has just parsed: the case that matters.
    sent = DataFrame(5, data=data, pad_length=pad_length or 0)
    if pad_length is not None:
        sent.flags.add("PADDED")
    wire = memoryview(sent.serialize())
    frame, length = Frame.parse_frame_header(wire[:9])
    frame.parse_body(wire[9 : 9 + length])
    assert isinstance(frame, DataFrame)
    assert frame._body_repr() == Frame._body_repr(frame)


def test_data_frame_repr_does_not_serialize_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    # The point of the fix: no copy and hex-encoding of the whole payload.
    def refuse(self: DataFrame) -> bytes:
        raise AssertionError("serialize_body called")

    monkeypatch.setattr(DataFrame, "serialize_body", refuse)
    frame = DataFrame(1, data=b"\x01" * (1 << 20))
    assert frame._body_repr() == "<hex:01010101010101010101...>"


def test_install_repr_fix_keeps_an_existing_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    def other(self: DataFrame) -> str:
        return "other"

    monkeypatch.setattr(DataFrame, "_body_repr", other)
    h2patch.install()
    assert DataFrame.__dict__["_body_repr"] is other


def test_installing_again_does_not_patch_again(monkeypatch: pytest.MonkeyPatch) -> None:
    h2patch.install()
    installed = DataFrame.__dict__["_body_repr"]
    monkeypatch.setattr(DataFrame, "_body_repr", installed)  # restored whatever happens below
    h2patch.install()
    assert DataFrame.__dict__["_body_repr"] is installed
    # A second, independent copy of the module: loading it patches nothing, and its install()
    # keeps the repr already there.
    spec = importlib.util.spec_from_file_location("_h2patch_again", h2patch.__file__)
    assert spec is not None
    assert spec.loader is not None
    again = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(again)
    assert DataFrame.__dict__["_body_repr"] is installed
    again.install()
    assert again._data_body_repr is not installed
    assert DataFrame.__dict__["_body_repr"] is installed
    # The same for grpclib's send_data and send_message: the first copy's stay.
    import grpclib.client
    import grpclib.protocol
    import grpclib.server

    assert grpclib.protocol.Stream.send_data is h2patch.send_data
    assert vars(grpclib.client)["send_message"] is h2patch.send_message
    assert vars(grpclib.server)["send_message"] is h2patch.send_message


# ----------------------------------------------------------------------------------------------
# 2. The outbound path: the same bytes as h2


def _connection(*, client_side: bool, patched: bool) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=client_side, header_encoding=None)
    )
    if patched:
        h2patch.adopt(conn)
        assert type(conn) is h2patch.H2Connection
    return conn


#: What the peer says first: large frames and windows, so big DATA frames may be sent.
_PEER_SETTINGS = (
    SettingsFrame(
        0,
        settings={
            h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: MAX_WINDOW,
        },
    ).serialize()
    + WindowUpdateFrame(0, window_increment=MAX_WINDOW - 65535).serialize()
)
_REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x"), (b":authority", b"a")]
_RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]


def _request_bytes() -> bytes:
    """A client preface, SETTINGS and request HEADERS on stream 1, for a server to receive."""
    client = _connection(client_side=True, patched=False)
    client.initiate_connection()
    client.send_headers(1, _REQUEST)
    return client.data_to_send() + _PEER_SETTINGS


#: One send: (payload size, pad length or None, send a memoryview, read this much or all).
Send = tuple[int, int | None, bool, int | None]


def _drive(
    conn: h2.connection.H2Connection,
    sends: Sequence[Send],
    *,
    client_side: bool,
    end_with_data: bool = False,
) -> list[bytes]:
    """Run a stream through ``conn``; every chunk ``data_to_send`` handed out, as bytes.

    The stream ends with the last DATA frame (``end_with_data``) or after it: with an empty
    DATA frame (client) or trailers (server).
    """
    out: list[bytes] = []

    def take(amount: int | None = None) -> None:
        chunk = conn.data_to_send(amount)
        assert isinstance(chunk, bytes | bytearray)
        out.append(bytes(chunk))

    if client_side:
        conn.initiate_connection()
        take()
        conn.receive_data(_PEER_SETTINGS)  # queues the SETTINGS ACK
        conn.send_headers(1, _REQUEST)
    else:
        conn.initiate_connection()
        conn.receive_data(_request_bytes())
        take()
        conn.send_headers(1, _RESPONSE)
    for i, (size, pad_length, as_view, amount) in enumerate(sends):
        data = _payload(size, seed=i)
        end = end_with_data and i == len(sends) - 1
        conn.send_data(
            1, memoryview(data) if as_view else data, end_stream=end, pad_length=pad_length
        )
        if i % 3 == 1:
            conn.ping(i.to_bytes(8, "big"))
        if amount is not None:
            take(amount)
    if not (end_with_data and sends):
        if client_side:
            conn.end_stream(1)  # an empty DATA frame with END_STREAM
        else:
            conn.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    take()
    take()  # nothing left
    return out


_SENDS = st.lists(
    st.tuples(
        st.one_of(
            st.integers(0, 300),
            st.sampled_from([16383, 16384, 65535, 65536, 65537, MAX_FRAME - 256]),
            st.integers(0, MAX_FRAME - 256),
        ),
        st.one_of(st.none(), st.integers(0, 255)),
        st.booleans(),
        st.one_of(st.none(), st.integers(0, 40000)),
    ),
    max_size=6,
)


@settings(max_examples=40, deadline=None)
@given(sends=_SENDS, client_side=st.booleans(), end_with_data=st.booleans())
def test_outbound_bytes_identical(
    sends: list[Send], client_side: bool, end_with_data: bool
) -> None:
    plain, patched = (
        _drive(
            _connection(client_side=client_side, patched=patched),
            sends,
            client_side=client_side,
            end_with_data=end_with_data,
        )
        for patched in (False, True)
    )
    assert patched == plain


@pytest.mark.parametrize("client_side", [True, False])
def test_outbound_bytes_identical_examples(client_side: bool) -> None:
    sends: list[Send] = [
        (0, None, False, None),
        (1, None, True, None),
        (16384, None, False, 100),
        (70000, 0, False, None),  # padded, with zero padding
        (300000, 255, True, 9),
        (MAX_FRAME, None, False, None),  # exactly the peer's maximum frame size
        (MAX_FRAME - 256, 255, False, None),  # padding fills the frame up to the maximum
        (5, 7, True, None),
    ]
    plain = _drive(
        _connection(client_side=client_side, patched=False), sends, client_side=client_side
    )
    patched = _drive(
        _connection(client_side=client_side, patched=True), sends, client_side=client_side
    )
    assert patched == plain
    assert sum(map(len, plain)) > 300000 + MAX_FRAME


def _frames() -> list[Frame]:
    padded = DataFrame(1, data=b"padded", pad_length=4)
    padded.flags.add("PADDED")
    last = DataFrame(1, data=memoryview(b"last"))  # type: ignore[arg-type]
    last.flags.add("END_STREAM")
    return [
        DataFrame(1, data=b"first"),
        PingFrame(0, opaque_data=b"12345678"),
        padded,
        DataFrame(1),
        DataFrame(0x7FFFFFFF, data=_payload(70000)),
        last,
    ]


def test_prepare_for_sending_mixed_frames() -> None:
    # DATA frames between other frames in one call, as h2 may queue them.
    plain = _connection(client_side=True, patched=False)
    patched = _connection(client_side=True, patched=True)
    plain.max_outbound_frame_size = patched.max_outbound_frame_size = MAX_FRAME
    plain_frames, patched_frames = _frames(), _frames()
    plain._prepare_for_sending(plain_frames)
    patched._prepare_for_sending(patched_frames)
    patched._prepare_for_sending([])
    assert bytes(patched.data_to_send()) == bytes(plain.data_to_send())
    # h2 checks body_len against the frame size limit: it must be set as hyperframe sets it.
    assert [f.body_len for f in patched_frames] == [f.body_len for f in plain_frames]


def test_data_frame_header_fields() -> None:
    # Decode what the patched connection sent with hyperframe: length over all 24 bits,
    # END_STREAM, stream id, payload.
    conn = _connection(client_side=True, patched=True)
    conn.initiate_connection()
    conn.receive_data(_PEER_SETTINGS)
    conn.send_headers(1, _REQUEST)
    conn.data_to_send()
    payload = _payload(MAX_FRAME, seed=3)  # 0x100000: only the top byte of the length is set
    conn.send_data(1, payload, end_stream=True)
    wire = memoryview(bytes(conn.data_to_send()))
    frame, length = Frame.parse_frame_header(wire[:9])
    assert isinstance(frame, DataFrame)
    assert (length, frame.stream_id, set(frame.flags)) == (MAX_FRAME, 1, {"END_STREAM"})
    frame.parse_body(wire[9:])
    assert frame.data == payload


@pytest.mark.parametrize("patched", [False, True])
def test_frame_larger_than_the_peer_allows_is_refused(patched: bool) -> None:
    conn = _connection(client_side=True, patched=patched)
    conn.initiate_connection()
    conn.send_headers(1, _REQUEST)
    conn.data_to_send()
    assert conn.max_outbound_frame_size == 16384
    with pytest.raises(h2.exceptions.FrameTooLargeError):
        conn.send_data(1, b"x" * 16385)
    with pytest.raises(h2.exceptions.FrameTooLargeError):
        conn.send_data(1, b"x" * 16200, pad_length=200)  # 16200 + 201
    assert bytes(conn.data_to_send()) == b""
    conn.send_data(1, b"x" * 16383, pad_length=0)  # 16383 + 1 length byte: fits
    assert len(conn.data_to_send()) == 9 + 16384


def test_handed_out_buffer_is_not_reused() -> None:
    # data_to_send() hands out the buffer itself: later sends must not write into it.
    conn = _connection(client_side=True, patched=True)
    conn.initiate_connection()
    conn.send_headers(1, _REQUEST)
    first = conn.data_to_send()
    snapshot = bytes(first)
    conn.send_data(1, b"later")
    conn.ping(b"12345678")
    assert bytes(first) == snapshot
    second = conn.data_to_send()
    assert second is not first
    assert bytes(second).endswith(PingFrame(0, opaque_data=b"12345678").serialize())
    assert bytes(conn.data_to_send()) == b""


def test_partial_reads_of_the_patched_connection() -> None:
    conn = _connection(client_side=True, patched=True)
    conn.initiate_connection()
    conn.send_headers(1, _REQUEST)
    conn.send_data(1, b"abcdef")
    whole = bytes(conn._data_to_send)
    assert whole.endswith(b"abcdef")
    head = conn.data_to_send(10)
    assert type(head) is bytes
    assert head == whole[:10]
    assert bytes(conn.data_to_send()) == whole[10:]


# ----------------------------------------------------------------------------------------------
# adopt()


def test_adopt_switches_a_plain_connection() -> None:
    conn = _connection(client_side=True, patched=False)
    conn.initiate_connection()
    state = dict(vars(conn))
    assert h2patch.adopt(conn) is None  # type: ignore[func-returns-value]
    assert type(conn) is h2patch.H2Connection
    assert isinstance(conn, h2.connection.H2Connection)
    assert vars(conn) == state  # no state added or changed
    assert bytes(conn.data_to_send()).startswith(b"PRI * HTTP/2.0")


def test_adopt_is_idempotent() -> None:
    conn = _connection(client_side=True, patched=True)
    h2patch.adopt(conn)
    assert type(conn) is h2patch.H2Connection


def test_adopt_leaves_other_subclasses_alone() -> None:
    class Custom(h2.connection.H2Connection):
        pass

    class MorePatched(h2patch.H2Connection):
        pass

    for cls in (Custom, MorePatched):
        conn = cls(h2.config.H2Configuration(client_side=True))
        h2patch.adopt(conn)
        assert type(conn) is cls


# ----------------------------------------------------------------------------------------------
# 3. grpclib's Stream.send_data, one transport write per run of frames: the same bytes


class _Transport:
    """What grpclib's stream needs of an asyncio transport: ``write``, recorded.

    With ``sock`` (one end of a socket pair) it is a plain socket's transport, as far as
    :func:`h2patch.write_buffers` can tell: it names the socket, has nothing buffered, and
    writes through to the socket, so the peer end receives everything in order.
    """

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.writes: list[bytes] = []
        self.sock = sock

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        if self.sock is not None:
            self.sock.sendall(data)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.sock if name == "socket" and self.sock is not None else default

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


class _Drain:
    """The peer end of a socket pair, read into ``received`` by a thread until EOF."""

    def __init__(self, sndbuf: int) -> None:
        self.ours, self.peer = socket.socketpair()
        self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.received = bytearray()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        while data := self.peer.recv(1 << 16):
            self.received += data

    def finish(self) -> bytes:
        self.ours.shutdown(socket.SHUT_WR)
        self.thread.join(30)
        self.ours.close()
        self.peer.close()
        return bytes(self.received)


def _send_with(
    send_data: Callable[..., Awaitable[None]],
    messages: Sequence[tuple[int, bool]],
    *,
    frame: int,
    window: int,
    update: int,
    adopt: bool = True,
    pieces: int = 1,
    sock: socket.socket | None = None,
) -> tuple[bytes, int]:
    """Send ``messages`` (size, end_stream) on a grpclib stream with ``send_data``; a peer with
    ``frame``-byte frames and a ``window``-byte initial window opens ``update`` more bytes each
    time the sender waits. ``pieces`` > 1: each message is given as :class:`h2patch.Pieces`
    of that many parts. Returns (every byte handed to the transport, number of writes: to the
    transport and ``os.writev`` calls)."""
    import asyncio

    import grpclib.config
    import grpclib.protocol

    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    if adopt:
        h2patch.adopt(conn)
    conn.initiate_connection()
    conn.receive_data(SettingsFrame(0, settings={
        h2.settings.SettingCodes.MAX_FRAME_SIZE: frame,
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
    }).serialize() + WindowUpdateFrame(0, window_increment=MAX_WINDOW - 65535).serialize())
    conn.send_headers(1, _REQUEST)
    transport = _Transport(sock)
    transport.write(conn.data_to_send())
    writevs = 0
    writev = os.writev

    def counted_writev(fd: int, buffers: Sequence[bytes]) -> int:
        nonlocal writevs
        writevs += 1
        return writev(fd, buffers)

    def split(data: bytes) -> bytes | h2patch.Pieces:
        if pieces == 1:
            return data
        cuts = sorted({0, len(data), *(len(data) * k // pieces for k in range(1, pieces))})
        return h2patch.Pieces(*(memoryview(data)[a:b] for a, b in itertools.pairwise(cuts)))

    async def main() -> None:
        connection = grpclib.protocol.Connection(
            conn, transport, config=grpclib.config.Configuration())  # type: ignore[arg-type]
        stream = grpclib.protocol.Stream(connection, conn, transport,  # type: ignore[arg-type]
                                         stream_id=1)
        for i, (size, end) in enumerate(messages):
            task = asyncio.ensure_future(send_data(stream, split(_payload(size, seed=i)), end))
            while not task.done():
                await asyncio.sleep(0)
                if not task.done() and not stream.window_updated.is_set():
                    conn.receive_data(WindowUpdateFrame(1, window_increment=update).serialize())
                    stream.window_updated.set()
            task.result()

    with mock.patch("os.writev", counted_writev):
        asyncio.run(main())
    return b"".join(transport.writes), len(transport.writes) + writevs


_SEND_CASES = pytest.mark.parametrize(
    ("messages", "frame", "window", "update"),
    [
        ([(0, True)], 16384, 65535, 65535),
        ([(1, False), (0, True)], 16384, 65535, 65535),
        ([(5 << 20, False), (3, True)], 16384, MAX_WINDOW, 1),  # grpc-go's frames, open window
        ([(1 << 20, True)], 16384, 65535, 65535),  # the default window: waits every 64 KiB
        ([(1 << 20, False), (777777, True)], 16384, 100000, 33333),  # window ends mid-frame
        ([(h2patch.COALESCE * 2 + 1, True)], 16385, MAX_WINDOW, 1),  # frames not a power of 2
        ([(300000, True)], MAX_FRAME, 70000, 70000),
    ],
)


@_SEND_CASES
def test_send_data_same_bytes_fewer_writes(
    messages: list[tuple[int, bool]], frame: int, window: int, update: int
) -> None:
    import grpclib.protocol

    h2patch.install()
    assert grpclib.protocol.Stream.send_data is h2patch.send_data  # installed
    # grpclib and h2 as released, against the patched send_data on an h2 connection that is
    # not ours (grpclib's own, write for write) and on our H2Connection (send_data_run).
    upstream, n_upstream = _send_with(h2patch._UPSTREAM_SEND_DATA, messages, frame=frame,
                                      window=window, update=update, adopt=False)
    other, n_other = _send_with(h2patch.send_data, messages, frame=frame, window=window,
                                update=update, adopt=False)
    patched, n_patched = _send_with(h2patch.send_data, messages, frame=frame, window=window,
                                    update=update)
    assert other == upstream and n_other == n_upstream
    assert patched == upstream
    assert sum(size for size, _ in messages) < len(upstream)
    frames = sum(-(-size // frame) or 1 for size, _ in messages)
    if frames > 8:  # the point: fewer writes; far fewer where the window is open
        assert n_patched < n_upstream
        if window == MAX_WINDOW:
            assert n_patched * 8 < n_upstream


@_SEND_CASES
@pytest.mark.parametrize("pieces", [2, 5])
def test_send_data_pieces_same_bytes(
    messages: list[tuple[int, bool]], frame: int, window: int, update: int, pieces: int
) -> None:
    # A message in pieces (item 5) goes out as the same frames as the joined bytes, frames
    # cut across the pieces' ends; on any h2 connection.
    upstream, _ = _send_with(h2patch._UPSTREAM_SEND_DATA, messages, frame=frame,
                             window=window, update=update, adopt=False)
    for adopt in (False, True):
        sent, _ = _send_with(h2patch.send_data, messages, frame=frame, window=window,
                             update=update, adopt=adopt, pieces=pieces)
        assert sent == upstream


@_SEND_CASES
@pytest.mark.parametrize("sndbuf", [4096, 1 << 22])
def test_send_data_straight_to_the_socket_same_bytes(
    messages: list[tuple[int, bool]], frame: int, window: int, update: int, sndbuf: int
) -> None:
    # Item 4: on a plain socket's transport with nothing buffered the frames go to the socket
    # by writev; what it does not take (a small send buffer: most of it) goes to the
    # transport. The peer receives exactly what upstream sends.
    upstream, _ = _send_with(h2patch._UPSTREAM_SEND_DATA, messages, frame=frame,
                             window=window, update=update, adopt=False)
    for pieces in (1, 3):
        drain = _Drain(sndbuf)
        try:
            through_transport, _ = _send_with(
                h2patch.send_data, messages, frame=frame, window=window, update=update,
                pieces=pieces, sock=drain.ours)
        finally:
            received = drain.finish()
        assert received == upstream
        if sndbuf > 1 << 20 and sum(size for size, _ in messages) > 1 << 20:
            assert len(through_transport) * 4 < len(upstream)  # most went by writev


class _FakeTransport:
    def __init__(self, extra: dict[str, object], buffered: int = 0, closing: bool = False):
        self.extra = extra
        self.buffered = buffered
        self.closing = closing
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        assert type(data) is bytes  # immutable: a transport may keep it (Python 3.12+ does)
        self.writes.append(data)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.extra.get(name, default)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing


@pytest.mark.parametrize(
    ("extra", "buffered", "closing"),
    [
        ({}, 0, False),  # no socket
        ({"sslcontext": object()}, 0, False),  # TLS: the socket under it is not ours to write
        ({"ssl_object": object()}, 0, False),
        ({}, 1, False),  # bytes queued: ours must come after them
        ({}, 0, True),
    ],
)
def test_write_buffers_through_the_transport(
    extra: dict[str, object], buffered: int, closing: bool
) -> None:
    a, b = socket.socketpair()
    with a, b:
        transport = _FakeTransport({**extra, "socket": a} if extra or buffered or closing
                                   else {}, buffered, closing)
        buffers: list[h2patch.Buffer] = [b"head", memoryview(b"-payload-")[1:-1], bytearray(b"!")]
        with mock.patch("os.writev", side_effect=AssertionError("writev")):
            h2patch.write_buffers(transport, buffers)  # type: ignore[arg-type]
        assert transport.writes == [b"headpayload!"]


@pytest.mark.parametrize(
    ("result", "written"),
    [
        (BlockingIOError(), b"abcdefgh"),
        (BrokenPipeError(), b"abcdefgh"),  # the transport meets the error and reports it
        (0, b"abcdefgh"),
        (3, b"defgh"),  # stopped inside a buffer
        (4, b"efgh"),  # at a buffer's end
        (8, None),  # all taken: nothing for the transport
    ],
)
def test_write_buffers_rest_to_the_transport(result: int | OSError,
                                             written: bytes | None) -> None:
    a, b = socket.socketpair()
    with a, b:
        transport = _FakeTransport({"socket": a})
        payload = bytearray(b"efgh")
        with mock.patch("os.writev", side_effect=[result]) as writev:
            h2patch.write_buffers(transport, [b"abcd", memoryview(payload)])  # type: ignore[arg-type]
        writev.assert_called_once()
        assert writev.call_args.args[0] == a.fileno()
        payload[:] = b"XXXX"  # reused at once by the caller: the transport has its own copy
        assert transport.writes == ([] if written is None else [written])


def test_write_buffers_at_most_iov_max_per_writev() -> None:
    a, b = socket.socketpair()
    with a, b:
        transport = _FakeTransport({"socket": a})
        buffers: list[h2patch.Buffer] = [bytes([i % 256]) for i in range(h2patch._IOV_MAX + 5)]
        h2patch.write_buffers(transport, buffers)  # type: ignore[arg-type]
        b.setblocking(False)
        direct = b.recv(1 << 16)
        assert direct == b"".join(buffers[: h2patch._IOV_MAX])
        assert transport.writes == [b"".join(buffers[h2patch._IOV_MAX :])]


# ----------------------------------------------------------------------------------------------
# 5. grpclib's send_message: an Encoded message in pieces, not joined


class _RecordingStream:
    """A protocol stream whose class has h2patch's ``send_data`` (what ``send_message`` checks)
    and which records, per instance, what it is given."""

    send_data: Any = h2patch.send_data

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bool]] = []
        self.types: list[type] = []
        self.send_data = self._record

    async def _record(self, data: bytes | h2patch.Pieces, end_stream: bool = False) -> None:
        self.types.append(type(data))
        self.sent.append((data.join() if isinstance(data, h2patch.Pieces) else bytes(data),
                          end_stream))


def _record_send_message(send_message: Callable[..., Coroutine[Any, Any, None]],
                         message: object,
                         message_type: type, end: bool) -> tuple[list[tuple[bytes, bool]],
                                                                 list[type]]:
    import asyncio

    from memoh_trio._bridge.codec import Codec

    stream = _RecordingStream()
    asyncio.run(send_message(stream, Codec(), message, message_type, end=end))
    return stream.sent, stream.types


@settings(max_examples=60, deadline=None)
@given(path=st.text(max_size=40), size=st.integers(0, 70000), end=st.booleans(),
       wide=st.booleans())
def test_send_message_same_bytes(path: str, size: int, end: bool, wide: bool) -> None:
    from memoh_trio import _wire
    from memoh_trio._bridge.codec import Codec, Encoded
    from memoh_trio._proto import mcpcontainer as pb

    data = _payload(size)
    # A view of 2-byte items: its len() counts items, not bytes.
    body = memoryview(data).cast("H") if wide and size % 2 == 0 else memoryview(data)
    joined = Encoded(_wire.encode_write_raw_chunk(path, data))
    upstream, _ = _record_send_message(h2patch._UPSTREAM_SEND_MESSAGE, joined, pb.WriteRawChunk,
                                       end)
    head = _wire.encode_write_raw_chunk_head(path, size)
    ours, types = _record_send_message(h2patch.send_message, Encoded(head, body),
                                       pb.WriteRawChunk, end)
    assert ours == upstream
    assert types == [h2patch.Pieces]
    # Through the codec (grpclib's own send_message, or another codec's caller): joined.
    assert Codec().encode(Encoded(head, body), None) == joined.payload


def test_send_message_other_messages_go_upstream() -> None:
    from memoh_trio._bridge.codec import Encoded
    from memoh_trio._proto import mcpcontainer as pb

    request = pb.StatRequest(path="x")
    for message in (request, Encoded(b"\x0a\x01x")):
        upstream, _ = _record_send_message(h2patch._UPSTREAM_SEND_MESSAGE, message,
                                           pb.StatRequest, True)
        ours, types = _record_send_message(h2patch.send_message, message, pb.StatRequest, True)
        assert ours == upstream
        assert types == [bytes]


def test_send_message_pieces_only_to_our_send_data() -> None:
    # A stream whose send_data is someone else's gets upstream's joined bytes.
    import asyncio

    from memoh_trio._bridge.codec import Codec, Encoded

    got: list[object] = []

    class Other:
        async def send_data(self, data: bytes, end_stream: bool = False) -> None:
            got.append(data)

    asyncio.run(h2patch.send_message(Other(), Codec(),  # type: ignore[arg-type]
                                     Encoded(b"\x12\x02", b"ab"), None))
    assert got == [b"\x00\x00\x00\x00\x04\x12\x02ab"]


def test_send_message_installed_for_client_and_server() -> None:
    import grpclib.client
    import grpclib.server
    import grpclib.stream

    h2patch.install()
    assert vars(grpclib.client)["send_message"] is h2patch.send_message
    assert vars(grpclib.server)["send_message"] is h2patch.send_message
    assert grpclib.stream.send_message is h2patch._UPSTREAM_SEND_MESSAGE  # untouched


_OTHER_CLIENT = """
import asyncio, sys
import grpclib.client, grpclib.protocol, grpclib.server, h2.connection
from grpclib.health.service import Health
from grpclib.health.v1.health_pb2 import HealthCheckRequest
from grpclib.health.v1.health_grpc import HealthStub
from memoh_trio._bridge import h2patch

h2patch.install()  # as when memoh-trio opened a channel or a server in this process
assert grpclib.protocol.Stream.send_data is h2patch.send_data
upstream_calls = []
upstream = h2patch._UPSTREAM_SEND_DATA

async def counted(stream, data, end_stream=False):
    upstream_calls.append(type(stream._h2_connection))
    return await upstream(stream, data, end_stream)

h2patch._UPSTREAM_SEND_DATA = counted

async def main():
    server = grpclib.server.Server([Health()])
    await server.start("127.0.0.1", 0)
    port = server._server.sockets[0].getsockname()[1]
    channel = grpclib.client.Channel("127.0.0.1", port)
    try:
        reply = await HealthStub(channel).Check(HealthCheckRequest())
    finally:
        channel.close()
        server.close()
        await server.wait_closed()
    print(reply.status, len(upstream_calls),
          all(t is h2.connection.H2Connection for t in upstream_calls))

asyncio.run(main())
"""


def test_another_grpclib_client_in_the_process_is_unaffected() -> None:
    """Another grpclib client and server in a process where memoh-trio installed its patches
    (plain grpclib, its own protobuf codec, asyncio): every message of theirs goes through
    grpclib's own ``send_data`` on a plain h2 connection (the patch only changes streams on
    our connections), and the call works. A subprocess: installing is for a process's life."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _OTHER_CLIENT], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    status, calls, plain = done.stdout.split()
    assert status == "1" and int(calls) >= 2 and plain == "True", done.stdout
