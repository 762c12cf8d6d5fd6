"""One WriteRaw stream, on the asyncio side: read a chunk, send it, repeat; then the reply.

The whole stream is one bridge crossing (:meth:`BridgeChannel.write_raw` runs
:meth:`Upload.run` on the asyncio loop): the source is read chunk by chunk (:mod:`.reader`), each
chunk is encoded by hand (:mod:`memoh_trio._wire`) and handed to HTTP/2, whose flow control is
the backpressure.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import grpclib.client
import h2.exceptions

from .. import _errors, _wire
from . import compat
from .codec import Encoded
from .errors import SizeMismatch, SourceFailure
from .reader import Reader, SourceSpec

Stream = grpclib.client.Stream[Any, Any]


@dataclass(frozen=True)
class WriteOutcome:
    bytes_written: int
    bytes_read: int
    sha256: str | None


class Upload:
    """The state of one WriteRaw stream: its source, the bytes read, the running hash."""

    def __init__(
        self,
        path: str,
        source: SourceSpec,
        *,
        chunk_size: int,
        expected_size: int | None,
        hash_sha256: bool,
        on_sent: Callable[[int], None] | None,
    ) -> None:
        self.path = path
        self._hasher = hashlib.sha256() if hash_sha256 else None
        self._reader = Reader(source, chunk_size, self._hasher)
        self._expected = expected_size
        self._on_sent = on_sent
        self.total = 0

    async def run(self, open_stream: Callable[[], AbstractAsyncContextManager[Stream]]
                  ) -> WriteOutcome:
        """Read, send, and check the server's reply. Raises SourceFailure, SizeMismatch,
        grpclib's errors (mapped by the caller) and :mod:`memoh_trio._errors`."""
        try:
            # A source failing before its first chunk: no stream, nothing created.
            data = await self._next()
            async with open_stream() as stream:
                reply = await self._send_all(stream, data)
        finally:
            await self._reader.aclose()
        return self._outcome(reply)

    async def _next(self) -> bytes | memoryview:
        """The next chunk (empty at the end), counted and checked against the expected size."""
        data = await self._reader.next()
        self.total += len(data)
        if self._expected is not None and (
            self.total > self._expected or (not data and self.total != self._expected)
        ):
            raise SizeMismatch
        return data

    async def _send_all(self, stream: Stream, data: bytes | memoryview) -> Any:
        """Send ``data`` (the first chunk, with the path) and the rest; return the reply."""
        sent = await self._send(stream, self.path, data)
        while sent and data:
            try:
                data = await self._next()
            except (SourceFailure, SizeMismatch):
                await self._abort(stream)
                raise
            if data:
                sent = await self._send(stream, "", data)
        if sent:
            await self._end(stream)
        # Closed early or not, the server's reply or status tells what happened
        # (recv_message raises GRPCError for a non-OK status).
        return await stream.recv_message()

    async def _send(self, stream: Stream, path: str, data: bytes | memoryview) -> bool:
        """Send one chunk (``path`` in the first only); False if the server closed the stream.

        The message goes out as its encoded head and ``data`` itself (:class:`Encoded` with a
        body): ``data`` is not copied into a message (see :mod:`.h2patch`, item 5).

        A server that fails a WriteRaw (ENOSPC, NotFound...) answers with its status and closes
        the stream while we may still be sending: h2 then raises StreamClosedError on our next
        frame. The status is read afterwards.
        """
        try:
            head = _wire.encode_write_raw_chunk_head(path, memoryview(data).nbytes)
            await stream.send_message(Encoded(head, data))
        except h2.exceptions.StreamClosedError:
            compat.mark_sending_ended(stream)
            return False
        if self._on_sent is not None and data:
            self._on_sent(len(data))
        return True

    async def _end(self, stream: Stream) -> None:
        try:
            await stream.end()
        except h2.exceptions.StreamClosedError:
            compat.mark_sending_ended(stream)

    async def _abort(self, stream: Stream) -> None:
        """The source failed mid-stream: tell the server to discard what it got.

        The server answers ABORTED (or, if it ignores abort, OK): either way the caller learns
        about the source failure, not the status.
        """
        try:
            await stream.send_message(Encoded(_wire.encode_write_raw_chunk(abort=True)), end=True)
        except h2.exceptions.StreamClosedError:
            compat.mark_sending_ended(stream)
        with contextlib.suppress(Exception):
            await stream.recv_message()

    def _outcome(self, reply: Any) -> WriteOutcome:
        if reply is None:
            raise _errors.Internal("server sent no reply", method="WriteRaw")
        written = int(reply.bytes_written)
        if written != self.total:
            raise _errors.RPCError(
                f"server wrote {written} bytes of {self.total} sent to {self.path!r}",
                status=_errors.Status.DATA_LOSS, method="WriteRaw",
            )
        return WriteOutcome(written, self.total, self._hasher.hexdigest() if self._hasher else None)
