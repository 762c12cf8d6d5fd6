"""The server's two client-streaming calls, WriteRaw and Exec (run on the trio-asyncio loop).

* WriteRaw: each chunk is written by a worker thread into a :class:`memoh_trio._fs.RawWriter`
  while the next one is received; the temporary file is renamed into place only after the
  client's stream ended cleanly, and discarded otherwise (also on cancellation).
* Exec: checked here, then handed to Trio once for the whole call
  (:func:`memoh_trio._exec.run_exec`), which reads stdin and emits output through the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import trio_asyncio
from grpclib.exceptions import GRPCError

from .. import _exec, _fs, _wire
from .._errors import Status
from .._paths import PathError
from .._proto.mcpcontainer import ExecOutput, ExecOutputStream, WriteRawResponse
from . import threads
from .inbound import GStream, Inbound, grpc_error


async def write_raw(stream: GStream, inbound: Inbound, root_fd: int,
                    writers: set[_fs.RawWriter], *, hooks: _fs.ServerHooks | None,
                    durable: bool, direct: bool) -> None:
    """Serve one WriteRaw call; ``writers`` holds its writer while the upload is in progress
    (so that a shutdown can discard it)."""
    first = await inbound.chunk(stream)
    if first is None:
        # No message at all: nothing to write and no path to write it to. Memoh's Go server
        # answers OK with 0 bytes and creates nothing, and Memoh's migrator sends exactly
        # this for an empty file (it sends a chunk only when a read returned bytes).
        await stream.send_message(WriteRawResponse(bytes_written=0))
        return
    if first.abort:
        raise grpc_error(Status.ABORTED, "upload aborted by the client; nothing written")
    if not first.path:
        raise grpc_error(Status.INVALID_ARGUMENT, "first chunk must include path")
    writer = _fs.RawWriter(root_fd, first.path, hooks=hooks, durable=durable, direct=direct)
    writers.add(writer)
    lease = inbound.lease(stream)
    loop = asyncio.get_running_loop()
    # The write of one chunk runs in a worker thread while the next one is received; at most
    # one write is in flight, so chunks land in order and memory stays at two chunks.
    pending: asyncio.Future[None] | None = None
    try:
        chunk: _wire.DecodedWriteRawChunk | None = first
        received = 0
        while chunk is not None:
            if chunk.abort:
                raise grpc_error(
                    Status.ABORTED,
                    f"upload of {first.path!r} aborted by the client; "
                    f"{writer.bytes_written} bytes received were discarded",
                )
            data = chunk.data
            if data:
                received += len(data)
                if pending is not None:
                    await pending  # raises that write's error
                    lease.release_older()  # the chunks written so far leave the budget
                pending = threads.run(writer.write, data)
                if hooks is not None and hooks.should_stall(received):
                    hooks.stalls += 1
                    await loop.create_future()  # until cancelled
            chunk = await inbound.chunk(stream)
        if pending is not None:
            await pending
        written = writer.commit()
    finally:
        if pending is not None:
            # On failure or cancellation discard() below waits for a write still running in
            # its thread (RawWriter's lock); its outcome no longer matters but is retrieved.
            if pending.done():
                _retrieve(pending)
            else:
                pending.add_done_callback(_retrieve)
        writer.discard()
        writers.discard(writer)
    await stream.send_message(WriteRawResponse(bytes_written=written))


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def exec_call(stream: GStream, inbound: Inbound, root_fd: int) -> None:
    """Serve one Exec call: the command from the first message, stdin from the following ones."""
    first = await inbound.message(stream)
    if first is None:
        raise grpc_error(Status.INVALID_ARGUMENT, "failed to receive exec config")
    if first.stdin_data:
        # Memoh's Go server reads only the command from the first message and drops its
        # stdin; a client relying on it would lose data there without a word. Refusing it
        # here makes such a client fail loudly against this server too.
        raise grpc_error(Status.INVALID_ARGUMENT,
                         "stdin_data in the first ExecInput is not read (Memoh's server "
                         "drops it too): send the command alone, then stdin in the "
                         "following messages")
    request = _exec.ExecRequest(
        command=first.command, work_dir=first.work_dir, env=tuple(first.env),
        timeout_seconds=first.timeout_seconds,
    )

    lease = inbound.lease(stream)
    lease.release_all()  # the command is read

    async def stdin() -> AsyncIterator[bytes]:
        while (message := await inbound.message(stream, read_ahead=True)) is not None:
            yield message.stdin_data
            lease.release_held()  # that message went to the process

    async def emit(kind: int, data: bytes) -> None:
        await stream.send_message(ExecOutput(stream=ExecOutputStream(kind), data=data))

    try:
        code = await trio_asyncio.trio_as_aio(_exec.run_exec)(
            root_fd, request,
            trio_asyncio.aio_as_trio(stdin()), trio_asyncio.aio_as_trio(emit),
        )
    except PathError:
        raise
    except ValueError as exc:  # e.g. a NUL byte in the command
        raise grpc_error(Status.INVALID_ARGUMENT, str(exc)) from None
    except BaseExceptionGroup as group:
        # A status raised while reading stdin (e.g. a message over the limit) comes out of
        # run_exec's nursery wrapped in a group: answer with that status, not UNKNOWN.
        found = group.subgroup(GRPCError)
        while found is not None and isinstance(found, BaseExceptionGroup):
            found = found.exceptions[0]  # type: ignore[assignment]
        if isinstance(found, GRPCError):
            raise found from None
        raise
    await stream.send_message(ExecOutput(stream=ExecOutputStream.EXIT, exit_code=code))
