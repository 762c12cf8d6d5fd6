"""Narrow fixes to h2/hyperframe/grpclib costs on the bulk-data path; behaviour and bytes unchanged.

All are measured costs of moving large files through grpclib (which drives h2). Each keeps
the upstream behaviour exactly; ``tests/test_h2patch.py`` compares them with the upstream code.

1. **DATA-frame repr.** h2 builds the repr of every frame it receives before it knows whether
   anyone logs it (``h2/connection.py``, ``H2Connection._receive_frame``:
   ``self.config.logger.trace("Received frame: %s", repr(frame))``, h2 4.x). For a DATA frame,
   hyperframe's ``Frame._body_repr`` (``hyperframe/frame.py``, 6.x) serializes the whole body
   and hex-encodes all of it, then keeps the first 20 hex digits: 17-18% of the server's time
   on a large upload with 256 KiB frames (cProfile, 2 x 128 MiB). ``DataFrame`` gets a
   ``_body_repr`` that returns the same string from the first 11 bytes of the body. Installed
   by :func:`install` when a channel or a server opens (not at import: importing memoh-trio
   changes nothing in hyperframe), only while ``DataFrame`` has no ``_body_repr`` of its own.

2. **Outbound DATA frames.** h2 turns a DATA frame into bytes through four copies of its
   payload: ``DataFrame.serialize_body`` joins padding and data, ``Frame.serialize`` prepends
   the header, ``H2Connection._prepare_for_sending`` appends to the outbound ``bytearray`` and
   ``H2Connection.data_to_send`` copies that into ``bytes``. With 1 MiB messages each copy is a
   fresh large allocation, which glibc serves with new pages (page faults were most of the
   client's system time). :class:`H2Connection` appends header and payload of unpadded DATA
   frames straight to the buffer and hands the buffer itself out of ``data_to_send()`` (a
   ``bytearray``: grpclib only passes it to ``transport.write``, which takes any bytes-like
   object and does not keep it). Other frames are serialized by hyperframe as before.

3. **One socket write per run of DATA frames.** grpclib's ``Stream.send_data``
   (``grpclib/protocol.py``, 0.4.x) cuts a message into frames of the peer's
   ``max_outbound_frame_size`` and calls ``transport.write`` after each frame: one ``send``
   system call per frame. grpc-go's server advertises 16 KiB frames, so a 128 MiB file cost
   our client 8,192 ``send`` calls (cProfile, 2 x 128 MiB into Memoh's Go server:
   ``socket.send`` 0.25 s of 1.56 s, plus asyncio's ``write`` around it). :func:`send_data`
   is the same loop, the same frames in the same order, but it hands the frames to the
   transport once per :data:`COALESCE` bytes (or when the flow-control window or the message
   ends); ``write_ready`` is still checked before every run, so asyncio's write buffer stays
   bounded as before. Installed by :func:`install` (like item 1), only while
   ``Stream.send_data`` is grpclib's own; it changes only streams on our connections
   (:func:`adopt`: memoh-trio's channels and servers): on any other grpclib connection in the
   process it is grpclib's own ``send_data``, call for call
   (``tests/test_h2patch.py::test_another_grpclib_client_in_the_process_is_unaffected``).

4. **A run of frames goes to the socket as it is.** On our :class:`H2Connection` a run of
   DATA frames is not copied into h2's outbound buffer: :meth:`H2Connection.send_data_run`
   returns the frame headers (one shared object for all full frames) and views of the payload,
   and :func:`write_buffers` hands them to the socket in one ``writev`` when the transport is
   a plain socket's with nothing queued; only what the socket does not take then goes to the
   transport, joined. Anything else (TLS, bytes already queued) gets ``transport.write`` of
   the joined bytes, the one copy item 2 made before.

5. **A message's file bytes are not joined into it.** grpclib's ``send_message``
   (``grpclib/stream.py``) encodes a message and prepends the 5-byte gRPC prefix:
   ``codec.encode`` and the ``+`` each copy the whole message. :mod:`memoh_trio._wire` had
   already encoded WriteRawChunk by hand, with a third copy to put the field's head before the
   data (``_wire.encode_write_raw_chunk``): three fresh 1 MiB allocations per chunk, with their
   page faults, were 40% of the client's CPU time on 2 x 128 MiB into Memoh's Go server
   (perf; cProfile: ``encode_write_raw_chunk`` 64 ms, grpclib ``send_message`` 55 ms).
   :class:`~.codec.Encoded` may carry the data apart (``Encoded(head, body)``), and
   :func:`send_message`, installed as grpclib.client's and grpclib.server's ``send_message``,
   passes the prefix and head, and the body, to :func:`send_data` as :class:`Pieces`, whose
   frames are cut across them. Every other message, codec or stream goes to grpclib's own
   ``send_message`` (and ``Codec.encode`` still joins an ``Encoded`` for anyone else).
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import os
import struct
from collections.abc import Sequence
from typing import Any

import grpclib.client
import grpclib.protocol
import grpclib.server
import grpclib.stream
import h2.connection
import h2.exceptions
from grpclib.encoding.base import CodecBase
from h2.connection import ConnectionInputs
from h2.stream import StreamInputs
from hyperframe.frame import DataFrame, Frame

# Absolute: the tests load a second, independent copy of this module from its file.
from memoh_trio._bridge import compat
from memoh_trio._bridge.codec import Codec, Encoded

#: What the outbound path takes as a payload piece or hands to a socket.
Buffer = bytes | bytearray | memoryview

#: The original repr shows 20 hex digits (10 bytes) and "..." when there are more.
_SHOWN = 10
#: hyperframe's frame header layout (``_STRUCT_HBBBL`` in hyperframe/frame.py).
_HEADER = struct.Struct(">HBBBL")
_DATA_TYPE = 0x0
_END_STREAM = 0x01


def _data_body_repr(self: DataFrame) -> str:
    head = b"".join([
        self.serialize_padding_data(),
        bytes(self.data[: _SHOWN + 1]),
        b"\0" * min(self.pad_length, _SHOWN + 1),
    ])[: _SHOWN + 1]
    if not head:
        return "None"
    digits = binascii.hexlify(head[:_SHOWN]).decode("ascii")
    return "<hex:" + digits + ("..." if len(head) > _SHOWN else "") + ">"


def _install_repr_fix() -> None:
    if "_body_repr" not in DataFrame.__dict__:
        DataFrame._body_repr = _data_body_repr  # type: ignore[method-assign,assignment]


class H2Connection(h2.connection.H2Connection):
    """h2's connection with a copy-saving outbound path (see the module docstring, item 2)."""

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        if not frames:
            return
        out = self._data_to_send
        for frame in frames:
            if type(frame) is DataFrame and "PADDED" not in frame.flags:
                data = frame.data
                length = len(data)
                frame.body_len = length
                flags = _END_STREAM if "END_STREAM" in frame.flags else 0
                out += _HEADER.pack((length >> 8) & 0xFFFF, length & 0xFF, _DATA_TYPE, flags,
                                    frame.stream_id & 0x7FFFFFFF)
                out += data
            else:
                out += frame.serialize()
        assert all(f.body_len <= self.max_outbound_frame_size for f in frames)

    def send_data_run(self, stream_id: int, pieces: Sequence[Buffer], start: int, n: int,
                      end_stream: bool) -> list[Buffer]:
        """``send_data(stream_id, chunk)`` for each ``max_outbound_frame_size`` chunk of the
        ``n`` bytes at ``start`` of ``pieces`` (buffers that together make one payload) in turn,
        ``end_stream`` on the last: the same frames, stream and connection state and
        flow-control windows, without a ``DataFrame`` and two state-machine steps per frame
        (module docstring, item 3). h2's ``SEND_DATA`` transitions in every state that allows
        them are self-loops without side effects (``h2/connection.py``
        ``ConnectionStateMachine._transitions``, ``h2/stream.py`` ``_transitions``), so one step
        stands for all the frames'.

        Returns what is to be written, in order, as a list of buffers: whatever h2 had queued
        before (the outbound buffer, handed over as :meth:`data_to_send` would), then each
        frame's header and views of ``pieces`` for its payload (item 4: nothing is copied; every
        full frame shares one header object). The caller writes them before anything else
        queues frames (:func:`write_buffers`)."""
        size = self.max_outbound_frame_size
        window = self.local_flow_control_window(stream_id)
        if n > window:
            msg = f"Cannot send {n} bytes, flow control window is {window}"
            raise h2.exceptions.FlowControlError(msg)
        self.state_machine.process_input(ConnectionInputs.SEND_DATA)
        stream = self.streams[stream_id]
        stream.state_machine.process_input(StreamInputs.SEND_DATA)
        out: list[Buffer] = []
        if self._data_to_send:
            out.append(self._data_to_send)
            self._data_to_send = bytearray()
        sid = stream_id & 0x7FFFFFFF
        full = _HEADER.pack((size >> 8) & 0xFFFF, size & 0xFF, _DATA_TYPE, 0, sid)
        # The piece holding byte `start`, and the offset in it.
        i = 0
        while i < len(pieces) - 1 and start >= len(pieces[i]):
            start -= len(pieces[i])
            i += 1
        piece = memoryview(pieces[i]) if pieces else memoryview(b"")
        left = n
        while True:
            length = min(left, size)
            left -= length
            flags = 0
            if not left and end_stream:
                stream.state_machine.process_input(StreamInputs.SEND_END_STREAM)
                flags = _END_STREAM
            if length == size and not flags:
                out.append(full)
            else:
                out.append(_HEADER.pack((length >> 8) & 0xFFFF, length & 0xFF, _DATA_TYPE, flags,
                                        sid))
            while length:  # the frame's payload: views of one piece or more
                if start == len(piece):
                    i += 1
                    piece = memoryview(pieces[i])
                    start = 0
                take = min(length, len(piece) - start)
                out.append(piece[start : start + take])
                start += take
                length -= take
            if not left:
                break
        stream.outbound_flow_control_window -= n
        self.outbound_flow_control_window -= n
        return out

    def data_to_send(self, amount: int | None = None) -> bytes:
        if amount is None:
            data, self._data_to_send = self._data_to_send, bytearray()
            # A bytearray, not bytes: see the module docstring.
            return data  # type: ignore[return-value]
        return super().data_to_send(amount)


def adopt(conn: h2.connection.H2Connection) -> None:
    """Switch a connection grpclib created to :class:`H2Connection` (no state is added)."""
    if type(conn) is h2.connection.H2Connection:
        conn.__class__ = H2Connection


#: Most DATA-frame bytes handed to ``transport.write`` at once (item 3 of the module docstring):
#: 32 frames of grpc-go's 16 KiB; large enough that the system call is no longer the cost,
#: small enough that asyncio's write buffer stays near its 64 KiB high-water mark.
COALESCE = 512 * 1024

#: ``os.writev`` takes at most this many buffers (``IOV_MAX`` on Linux and the BSDs).
_IOV_MAX = 1024


def write_buffers(transport: asyncio.WriteTransport, buffers: list[Buffer]) -> None:
    """``transport.write(b"".join(buffers))``, without the join where the socket takes them.

    When the transport is a plain socket's (not TLS) and has nothing buffered, the buffers go
    to the socket in one ``writev`` (item 4); only what it does not take is joined and handed
    to the transport, which keeps it and writes it when the socket drains, as it does with
    whatever ``send`` leaves. Nothing written here stays referenced after the return, so the
    buffers may be reused at once. A failing ``writev`` (the peer reset the connection...)
    leaves it to ``transport.write`` to fail the same way and report it as it always does.
    """
    fd = compat.plain_socket_fd(transport)
    if fd >= 0 and not transport.get_write_buffer_size() and not transport.is_closing():
        sent = 0
        with contextlib.suppress(OSError):  # BlockingIOError too: nothing was written
            sent = os.writev(fd, buffers[:_IOV_MAX])
        if sent == sum(map(len, buffers)):
            return
        for i, buf in enumerate(buffers):  # the rest: from the first byte not sent
            if sent < len(buf):
                buffers = [memoryview(buf)[sent:], *buffers[i + 1 :]]
                break
            sent -= len(buf)
    transport.write(b"".join(buffers))


class Pieces:
    """A payload for :func:`send_data` in pieces: the bytes ``b"".join(pieces)`` without the
    join (item 5)."""

    __slots__ = ("pieces", "size")

    def __init__(self, *pieces: Buffer) -> None:
        self.pieces = tuple(memoryview(p).cast("B") for p in pieces)  # len() counts bytes
        self.size = sum(map(len, self.pieces))

    def __len__(self) -> int:
        return self.size

    def join(self) -> bytes:
        return b"".join(self.pieces)


#: grpclib's own ``Stream.send_data`` (also when a second copy of this module is loaded).
_UPSTREAM_SEND_DATA = getattr(grpclib.protocol.Stream.send_data, "upstream",
                              grpclib.protocol.Stream.send_data)


async def send_data(self: grpclib.protocol.Stream, data: bytes | Pieces,
                    end_stream: bool = False) -> None:
    """grpclib's ``Stream.send_data``, writing to the transport once per run of frames; ``data``
    may also be :class:`Pieces`."""
    conn = self._h2_connection
    if type(conn) is not H2Connection:  # not one of ours: grpclib's own, unchanged
        await _UPSTREAM_SEND_DATA(self, data.join() if isinstance(data, Pieces) else data,
                                  end_stream)
        return
    assert self.id is not None
    pieces: Sequence[Buffer] = data.pieces if isinstance(data, Pieces) else (data,)
    f_pos, f_last = 0, len(data)
    while True:
        await self.connection.write_ready.wait()

        window = conn.local_flow_control_window(self.id)
        # window can become negative
        if not window > 0:
            self.window_updated.clear()
            await self.window_updated.wait()
            # during "await" above other streams were able to send data and
            # decrease current window size, so try from the beginning
            continue

        # The frames upstream sends until the window or the message ends, or (whole frames)
        # COALESCE bytes or just past it: put together, and written at once.
        size = conn.max_outbound_frame_size
        run = min(window, f_last - f_pos, -(-COALESCE // size) * size)
        last = f_pos + run == f_last
        buffers = conn.send_data_run(self.id, pieces, f_pos, run, end_stream and last)
        f_pos += run
        write_buffers(self._transport, buffers)
        self.data_sent += run
        self.connection.data_sent += run
        self.connection.data_send_process()
        if last:
            break


send_data.upstream = _UPSTREAM_SEND_DATA  # type: ignore[attr-defined]


def _install_send_data() -> None:
    if grpclib.protocol.Stream.send_data.__module__ == "grpclib.protocol":
        grpclib.protocol.Stream.send_data = send_data  # type: ignore[method-assign]


#: The gRPC message prefix: not compressed, then the length (``grpclib/stream.py``).
_PREFIX = struct.Struct(">?I")

#: grpclib's own ``send_message`` (``grpclib/stream.py``), as grpclib.client and grpclib.server
#: import it (also when a second copy of this module is loaded).
_UPSTREAM_SEND_MESSAGE = grpclib.stream.send_message


async def send_message(stream: grpclib.protocol.Stream, codec: CodecBase, message: Any,
                       message_type: Any, *, end: bool = False) -> None:
    """grpclib's ``send_message`` (``grpclib/stream.py``); an :class:`~.codec.Encoded` message
    in pieces goes to :func:`send_data` as :class:`Pieces`, not joined (item 5)."""
    if (type(message) is Encoded and message.body is not None and isinstance(codec, Codec)
            and type(stream).send_data is send_data):
        body = memoryview(message.body)
        head = _PREFIX.pack(False, len(message.payload) + body.nbytes) + message.payload
        await stream.send_data(Pieces(head, body), end_stream=end)  # type: ignore[arg-type]
        return
    await _UPSTREAM_SEND_MESSAGE(stream, codec, message, message_type, end=end)


def _install_send_message() -> None:
    for module in (grpclib.client, grpclib.server):
        if module.send_message is _UPSTREAM_SEND_MESSAGE:
            module.send_message = send_message  # type: ignore[attr-defined]


def install() -> None:
    """Install items 1 and 3 (item 2 is per connection, :func:`adopt`); idempotent, and keeps a
    repr or a ``send_data`` someone else set. Called when a channel or a server opens."""
    _install_repr_fix()
    _install_send_data()
    _install_send_message()
