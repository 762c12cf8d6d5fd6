"""Narrow fixes to h2/hyperframe costs on the bulk-data path; behaviour and bytes unchanged.

Both are measured costs of moving large files through grpclib (which drives h2). Each keeps
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
   ``Stream.send_data`` is grpclib's own.
"""

from __future__ import annotations

import binascii
import struct
from io import BytesIO

import grpclib.protocol
import h2.connection
import h2.exceptions
from h2.connection import ConnectionInputs
from h2.stream import StreamInputs
from hyperframe.frame import DataFrame, Frame

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

    def send_data_run(self, stream_id: int, data: memoryview, end_stream: bool) -> None:
        """``send_data(stream_id, chunk)`` for each ``max_outbound_frame_size`` chunk of
        ``data`` in turn (``end_stream`` on the last): the same frames, stream and connection
        state and flow-control windows, without a ``DataFrame`` and two state-machine steps per
        frame (module docstring, item 3). h2's ``SEND_DATA`` transitions in every state that
        allows them are self-loops without side effects (``h2/connection.py``
        ``ConnectionStateMachine._transitions``, ``h2/stream.py`` ``_transitions``), so one step
        stands for all the frames'. The payload is appended from ``data`` (a view) without an
        intermediate copy: h2 makes one (``memoryview.tobytes``) for a view, grpclib one per frame
        (``BytesIO.read``) for all but a whole message that fits one frame."""
        size = self.max_outbound_frame_size
        n = len(data)
        window = self.local_flow_control_window(stream_id)
        if n > window:
            msg = f"Cannot send {n} bytes, flow control window is {window}"
            raise h2.exceptions.FlowControlError(msg)
        self.state_machine.process_input(ConnectionInputs.SEND_DATA)
        stream = self.streams[stream_id]
        stream.state_machine.process_input(StreamInputs.SEND_DATA)
        out = self._data_to_send
        sid = stream_id & 0x7FFFFFFF
        full = _HEADER.pack((size >> 8) & 0xFFFF, size & 0xFF, _DATA_TYPE, 0, sid)
        start = 0
        while n - start > size:
            out += full
            out += data[start : start + size]
            start += size
        tail = n - start
        flags = 0
        if end_stream:
            stream.state_machine.process_input(StreamInputs.SEND_END_STREAM)
            flags = _END_STREAM
        out += _HEADER.pack((tail >> 8) & 0xFFFF, tail & 0xFF, _DATA_TYPE, flags, sid)
        out += data[start:]
        stream.outbound_flow_control_window -= n
        self.outbound_flow_control_window -= n

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

#: grpclib's own ``Stream.send_data`` (also when a second copy of this module is loaded).
_UPSTREAM_SEND_DATA = getattr(grpclib.protocol.Stream.send_data, "upstream",
                              grpclib.protocol.Stream.send_data)


async def send_data(self: grpclib.protocol.Stream, data: bytes, end_stream: bool = False) -> None:
    """grpclib's ``Stream.send_data``, writing to the transport once per run of frames."""
    assert self.id is not None
    conn = self._h2_connection
    f = BytesIO(data)
    f_pos, f_last = 0, len(data)
    view = memoryview(data)

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

        max_frame_size = conn.max_outbound_frame_size
        if type(conn) is H2Connection:  # the same frames, put together in one call
            # whole frames up to COALESCE or just past it, as the loop below does
            run = min(window, f_last - f_pos, -(-COALESCE // max_frame_size) * max_frame_size)
            last = f_pos + run == f_last
            conn.send_data_run(self.id, view[f_pos : f_pos + run], end_stream and last)
            f_pos += run
            f.seek(f_pos)
            self._transport.write(conn.data_to_send())
            self.data_sent += run
            self.connection.data_sent += run
            self.connection.data_send_process()
            if last:
                break
            continue
        run = 0
        while True:  # upstream's loop body, without its awaits and writes: no task runs between
            f_chunk = f.read(min(window, max_frame_size, f_last - f_pos))
            f_chunk_len = len(f_chunk)
            f_pos = f.tell()
            last = f_pos == f_last
            if last:
                conn.send_data(self.id, f_chunk, end_stream=end_stream)
            else:
                conn.send_data(self.id, f_chunk)
            window -= f_chunk_len
            run += f_chunk_len
            if last or window <= 0 or run >= COALESCE:
                break
        self._transport.write(conn.data_to_send())
        self.data_sent += run
        self.connection.data_sent += run
        self.connection.data_send_process()
        if last:
            break


send_data.upstream = _UPSTREAM_SEND_DATA  # type: ignore[attr-defined]


def _install_send_data() -> None:
    if grpclib.protocol.Stream.send_data.__module__ == "grpclib.protocol":
        grpclib.protocol.Stream.send_data = send_data  # type: ignore[method-assign]


def install() -> None:
    """Install items 1 and 3 (item 2 is per connection, :func:`adopt`); idempotent, and keeps a
    repr or a ``send_data`` someone else set. Called when a channel or a server opens."""
    _install_repr_fix()
    _install_send_data()
