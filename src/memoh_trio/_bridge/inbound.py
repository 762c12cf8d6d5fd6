"""Request messages as the server reads them, and the errors it answers with.

grpclib buffers a whole message before its handler sees it; the server instead reads the 5-byte
gRPC prefix itself and refuses a message over ``max_message_size`` (RESOURCE_EXHAUSTED) before
its body is buffered. WriteRaw chunks are parsed without copying their data
(:mod:`memoh_trio._wire`); other messages are decoded by the call's codec.
"""

from __future__ import annotations

from typing import Any

import grpclib.const
import grpclib.server
from grpclib.exceptions import GRPCError

from .. import _wire
from .._errors import Status
from . import compat

GStream = grpclib.server.Stream[Any, Any]


def grpc_error(status: Status, message: str) -> GRPCError:
    """The error a handler raises to answer with ``status``."""
    return GRPCError(grpclib.const.Status(int(status)), message)


class Inbound:
    """Reads the request messages of the server's calls under one size limit."""

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size

    async def body(self, stream: GStream) -> bytes | None:
        """The next message's bytes, or None at the end of the client's stream."""
        h2_stream = compat.server_h2_stream(stream)
        prefix = await h2_stream.recv_data(5)
        if not prefix:
            return None
        if len(prefix) != 5:
            raise grpc_error(Status.INVALID_ARGUMENT, "truncated gRPC message prefix")
        if prefix[0]:
            raise grpc_error(Status.UNIMPLEMENTED, "compressed messages are not supported")
        length = int.from_bytes(prefix[1:5], "big")
        if length > self.max_message_size:
            raise grpc_error(
                Status.RESOURCE_EXHAUSTED,
                f"message of {length} bytes exceeds the server limit of "
                f"{self.max_message_size} bytes",
            )
        body: bytes = await h2_stream.recv_data(length) if length else b""
        if len(body) != length:
            raise grpc_error(Status.INVALID_ARGUMENT, "truncated gRPC message")
        return body

    async def message(self, stream: GStream) -> Any | None:
        """The next message, or None at the end of the client's stream; refuses a message over
        the limit from its length prefix, before buffering it."""
        body = await self.body(stream)
        if body is None:
            return None
        return compat.decode_request(stream, body)

    async def one(self, stream: GStream) -> Any:
        """The request of a unary call (missing: INVALID_ARGUMENT)."""
        message = await self.message(stream)
        if message is None:
            raise grpc_error(Status.INVALID_ARGUMENT, "request message missing")
        return message

    async def chunk(self, stream: GStream) -> _wire.DecodedWriteRawChunk | None:
        """Next WriteRawChunk, parsed without copying its data (see :mod:`memoh_trio._wire`)."""
        body = await self.body(stream)
        if body is None:
            return None
        try:
            return _wire.decode_write_raw_chunk(body)
        except _wire.WireError as exc:
            raise grpc_error(Status.INVALID_ARGUMENT, f"malformed WriteRawChunk: {exc}") from None
