"""One Exec stream, on the asyncio side, as Memoh's server speaks it.

Memoh's Go server (``cmd/mcp``, ``Exec``) reads ``command``, ``work_dir``, ``env`` and
``timeout_seconds`` from the first ``ExecInput`` and drops its ``stdin_data``; only later messages
feed the command's stdin. grpc-go refuses a received message over 4 MiB. So the first message
carries the command alone (:func:`check_first` refuses one that would not fit) and stdin follows
in messages of at most :data:`EXEC_STDIN_CHUNK` bytes, sent beside receiving the output.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpclib.client
import grpclib.exceptions
import h2.exceptions

from .. import _errors, _wire
from .._proto import mcpcontainer as pb
from . import compat
from .codec import Encoded
from .errors import SourceFailure
from .pipe import Pipe

Stream = grpclib.client.Stream[Any, Any]
Stdin = bytes | memoryview | Pipe[bytes]

#: Most stdin bytes per ExecInput message after the first (a message must stay below the
#: 4 MiB that grpc-go and grpcio accept by default; 1 MiB as for WriteRaw chunks).
EXEC_STDIN_CHUNK = 1024 * 1024
#: Largest message grpc-go and grpcio servers accept by default (with the 5-byte gRPC framing).
MAX_SEND_MESSAGE = 4 * 1024 * 1024
GRPC_FRAMING = 5


def check_first(first: pb.ExecInput) -> None:
    """Refuse a first message (the command) that no default gRPC server would accept."""
    if len(bytes(first)) + GRPC_FRAMING > MAX_SEND_MESSAGE:
        raise _errors.InvalidArgument(
            f"the command is too long for one gRPC message ({len(first.command)} bytes; "
            f"servers refuse messages over {MAX_SEND_MESSAGE} bytes): send it as stdin",
            method="Exec",
        )


async def run_exec(stream: Stream, first: pb.ExecInput, stdin: Stdin | None,
                   on_output: Callable[[str, bytes], None]) -> int:
    """Send the command (and stdin), hand the output to ``on_output``; the exit code."""
    if not stdin:
        await stream.send_message(first, end=True)
        return await _receive(stream, on_output)
    await stream.send_message(first)
    return await _with_stdin(stream, stdin, on_output)


async def _receive(stream: Stream, on_output: Callable[[str, bytes], None]) -> int:
    """asyncio side: hand the output to ``on_output`` until the end; return the exit code."""
    exit_code: int | None = None
    while True:
        msg = await stream.recv_message()
        if msg is None:
            break
        if msg.stream == pb.ExecOutputStream.EXIT:
            exit_code = int(msg.exit_code)
        elif msg.data:
            err = msg.stream == pb.ExecOutputStream.STDERR
            on_output("stderr" if err else "stdout", bytes(msg.data))
    if exit_code is None:
        # The server's status says why, where it gave one: grpc-go ends the call with INTERNAL
        # and its reason when a Send fails (Memoh's server sends stdout and stderr from two
        # goroutines at once, which grpc-go does not allow). That error is raised here.
        with contextlib.suppress(grpclib.exceptions.ProtocolError):
            await stream.recv_trailing_metadata()
        raise _errors.Internal("exec stream ended without an exit status", method="Exec")
    return exit_code


async def _stdin_pieces(stdin: Stdin) -> AsyncIterator[bytes | memoryview]:
    """asyncio side: ``stdin`` in pieces of at most EXEC_STDIN_CHUNK bytes (views, not copies,
    of bytes the caller handed over and no longer changes)."""
    if not isinstance(stdin, Pipe):
        view = memoryview(stdin).cast("B")
        for start in range(0, len(view), EXEC_STDIN_CHUNK):
            yield view[start : start + EXEC_STDIN_CHUNK]
        return
    while (data := await stdin.aget()) is not None:
        for start in range(0, len(data), EXEC_STDIN_CHUNK):
            yield data[start : start + EXEC_STDIN_CHUNK]


async def _send_stdin(stream: Stream, stdin: Stdin) -> None:
    """asyncio side: one ExecInput per piece of ``stdin``, then the end of the stream."""
    async for piece in _stdin_pieces(stdin):
        # Encoded by hand and sent as head + the piece itself, without copies (as WriteRaw's
        # chunks; betterproto2 copied each MiB several times: a tar batch's data is all stdin).
        head = _wire.encode_exec_stdin_head(memoryview(piece).nbytes)
        await stream.send_message(Encoded(head, piece))
    await stream.end()


async def _with_stdin(stream: Stream, stdin: Stdin,
                      on_output: Callable[[str, bytes], None]) -> int:
    """asyncio side: send stdin beside receiving the output.

    A command may exit before it read all of its stdin: the server then answers in full and
    closes the stream (grpc-go: RST_STREAM(NO_ERROR), which :mod:`.channel`'s protocol lets end the
    stream without losing the answer); the rest of stdin is dropped and the answer counts. A
    failing stdin source cancels the call and its error is raised.
    """
    receiver = asyncio.current_task()
    assert receiver is not None
    failure: SourceFailure | None = None

    async def send() -> None:
        nonlocal failure
        try:
            await _send_stdin(stream, stdin)
        except h2.exceptions.StreamClosedError:
            pass  # the server has answered, or will: its answer tells what happened
        except SourceFailure as exc:
            failure = exc
            receiver.cancel()

    sender = asyncio.ensure_future(send())
    try:
        code = await _receive(stream, on_output)
    except asyncio.CancelledError:
        if failure is not None:
            raise failure from None
        raise
    finally:
        if not sender.done():
            sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        if isinstance(stdin, Pipe):
            stdin.abandon()
    await end_sending(stream)
    return code


async def end_sending(stream: Stream) -> None:
    """asyncio side: end our half of a stream the server has answered in full.

    The stream ends normally if it can; if the server closed it already (RST_STREAM(NO_ERROR)
    after its answer) that is recorded, so grpclib goes on to read the status.
    """
    if compat.sending_ended(stream):
        return
    try:
        await stream.end()
    except h2.exceptions.StreamClosedError:
        compat.mark_sending_ended(stream)
