"""Request messages as the server reads them, and the errors it answers with.

grpclib buffers a whole message before its handler sees it; the server instead reads the 5-byte
gRPC prefix itself and refuses a message over ``max_message_size`` (RESOURCE_EXHAUSTED) before
its body is buffered, and reads a body only once its length fits in the server's budget of
bytes in flight (:mod:`.budget`): until then nothing more is read from the stream, so its
flow-control windows stay closed. WriteRaw chunks are parsed without copying their data
(:mod:`memoh_trio._wire`); other messages are decoded by the call's codec.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpclib.const
import grpclib.server
from grpclib.exceptions import GRPCError

from .. import _wire
from .._errors import Status
from . import compat
from .budget import InflightBudget, Lease

GStream = grpclib.server.Stream[Any, Any]

#: Bytes a streaming call takes ahead for its next messages when they are free (see .budget).
READ_AHEAD = 4 * 1024 * 1024
#: Bodies up to this size are received without the stall watch (most unary requests: a task
#: and a timer each would cost more than the few bytes they hold).
UNWATCHED_BODY = 4096
#: Seconds a message holding its share of the budget may receive nothing while other calls
#: wait for the budget, before its call fails (RESOURCE_EXHAUSTED).
STALL_TIMEOUT = 5.0


def grpc_error(status: Status, message: str) -> GRPCError:
    """The error a handler raises to answer with ``status``."""
    return GRPCError(grpclib.const.Status(int(status)), message)


class Inbound:
    """Reads the request messages of the server's calls under one size limit and one budget."""

    def __init__(self, max_message_size: int, budget: InflightBudget) -> None:
        self.max_message_size = max_message_size
        self.budget = budget
        self._leases: dict[GStream, Lease] = {}

    def open_lease(self, stream: GStream) -> Lease:
        """The share of the budget this call holds; :meth:`close_lease` gives it all back."""
        lease = self._leases[stream] = Lease(self.budget)
        return lease

    def close_lease(self, stream: GStream) -> None:
        lease = self._leases.pop(stream, None)
        if lease is not None:
            lease.release_all()

    def lease(self, stream: GStream) -> Lease:
        lease = self._leases.get(stream)
        if lease is None:  # a call outside the service's handlers (tests): one of its own
            lease = self.open_lease(stream)
        return lease

    async def body(self, stream: GStream, *, read_ahead: bool = False) -> bytes | None:
        """The next message's bytes, or None at the end of the client's stream.

        ``read_ahead`` (a streaming call): once the body is read, take the budget for another
        message of its size if it is free, and let the client send it (see :mod:`.budget`).
        """
        h2_stream = compat.server_h2_stream(stream)
        lease = self.lease(stream)
        if lease.ahead:
            prefix = await self._prefix_holding_ahead(h2_stream, lease)
        else:
            prefix = await h2_stream.recv_data(5)
        if not prefix:
            return None
        lease.consumed += len(prefix)
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
        if not length:
            return b""
        # Wait for room in the budget, then let the client send the body (see .budget).
        await lease.take(length)
        if need := lease.window_needed(length):
            compat.open_stream_window(h2_stream, need)
        if length > UNWATCHED_BODY:
            body = await self._watched(h2_stream, length)
        else:
            body = await h2_stream.recv_data(length)
        lease.consumed += len(body)
        if len(body) != length:
            raise grpc_error(Status.INVALID_ARGUMENT, "truncated gRPC message")
        if (read_ahead and lease.take_ahead(max(length, READ_AHEAD))
                and (need := lease.window_needed(lease.ahead))):
            compat.open_stream_window(h2_stream, need)
        return body

    async def _prefix_holding_ahead(self, h2_stream: Any, lease: Lease) -> bytes:
        """The next prefix, while the budget taken ahead for its message is held: given back
        if nothing comes for :data:`STALL_TIMEOUT` seconds while other calls wait."""
        read = asyncio.ensure_future(h2_stream.recv_data(5))
        try:
            while lease.ahead:
                done, _ = await asyncio.wait({read}, timeout=STALL_TIMEOUT)
                if done:
                    break
                if self.budget.budget.waiting():
                    lease.drop_ahead()
            prefix: bytes = await read
            return prefix
        finally:
            if not read.done():
                read.cancel()

    async def _watched(self, h2_stream: Any, length: int) -> bytes:
        """Receive a body that holds its share of the budget; a client that sends nothing of
        it for :data:`STALL_TIMEOUT` seconds while other calls wait for the budget loses the
        call (RESOURCE_EXHAUSTED), so that a hung or hostile client cannot keep the budget."""
        read = asyncio.ensure_future(h2_stream.recv_data(length))
        try:
            while True:
                seen = h2_stream.data_received
                done, _ = await asyncio.wait({read}, timeout=STALL_TIMEOUT)
                if done:
                    body: bytes = read.result()
                    return body
                if h2_stream.data_received == seen and self.budget.budget.waiting():
                    raise grpc_error(
                        Status.RESOURCE_EXHAUSTED,
                        f"no data of a {length}-byte message for {STALL_TIMEOUT:g} s while "
                        "other calls wait for the server's memory budget; call again")
        finally:
            if not read.done():
                read.cancel()

    async def message(self, stream: GStream, *, read_ahead: bool = False) -> Any | None:
        """The next message, or None at the end of the client's stream; refuses a message over
        the limit from its length prefix, before buffering it (``read_ahead``: see
        :meth:`body`)."""
        body = await self.body(stream, read_ahead=read_ahead)
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
        """Next WriteRawChunk, parsed without copying its data (see :mod:`memoh_trio._wire`);
        the next chunk is read ahead as the budget allows."""
        body = await self.body(stream, read_ahead=True)
        if body is None:
            return None
        try:
            return _wire.decode_write_raw_chunk(body)
        except _wire.WireError as exc:
            raise grpc_error(Status.INVALID_ARGUMENT, f"malformed WriteRawChunk: {exc}") from None
