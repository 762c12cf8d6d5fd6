"""grpclib codec shared by the client and the server: bulk messages skip betterproto2.

grpclib encodes every message through its codec (``grpclib.encoding.proto.ProtoCodec`` calls the
message's ``SerializeToString``/``FromString``, which betterproto2 implements). For the two
messages that carry file bytes that path is the main cost of a large copy (see
:mod:`memoh_trio._wire`), so this codec

* passes an :class:`Encoded` message (bytes already in wire form) through untouched, and
* parses ``DataChunk`` with :func:`memoh_trio._wire.decode_data_chunk`.

Every other message goes through betterproto2 as before. The wire bytes are identical either
way (``tests/test_wire.py``).
"""

from __future__ import annotations

from typing import Any

from grpclib.encoding.proto import ProtoCodec

from .. import _wire
from .._proto import mcpcontainer as pb


class Encoded:
    """A message already encoded (by :mod:`memoh_trio._wire`); sent as is: ``payload``, then
    ``body`` if given (a file's bytes after their field's head: grpclib's ``send_message`` as
    :mod:`.h2patch` installs it sends the two without joining them)."""

    __slots__ = ("body", "payload")

    def __init__(self, payload: bytes, body: bytes | bytearray | memoryview | None = None
                 ) -> None:
        self.payload = payload
        self.body = body


class Codec(ProtoCodec):
    def encode(self, message: Any, message_type: Any) -> bytes:
        if type(message) is Encoded:
            return message.payload if message.body is None else message.payload + message.body
        return super().encode(message, message_type)

    def decode(self, data: bytes, message_type: Any) -> Any:
        if message_type is pb.DataChunk:
            return pb.DataChunk(data=bytes(_wire.decode_data_chunk(data)))
        return super().decode(data, message_type)
