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
"""

from __future__ import annotations

import binascii
import struct

import h2.connection
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


def install() -> None:
    """Install the DATA-frame repr (item 1); idempotent, and keeps a repr someone else set."""
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

