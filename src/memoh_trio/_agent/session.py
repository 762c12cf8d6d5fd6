"""The agent over one Exec stream, in Trio: :func:`open_agent` gives an :class:`Agent`.

The Exec call runs in a task beside the caller for as long as the block lasts: requests go
down its stdin as frames (pipelined: several tasks may have requests in flight; the agent
answers in order), the agent's stdout is fed to the :class:`~.driver.Driver`, and each reply is
handed to the task that waits for it. When the agent's process ends or the stream breaks,
every waiting task gets the same :class:`~.driver.AgentError`, and so does every later call.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import trio

from .._errors import MemohError
from .._results import ExecResult
from . import command
from .driver import AgentCrashed, AgentError, Driver, Record, Reply

#: Bytes of file content per ``write`` frame.
WRITE_CHUNK = 1024 * 1024
#: Exec's ``timeout_seconds`` for the agent: it lives as long as the migration.
AGENT_TIMEOUT = 7 * 24 * 3600
#: Seconds the agent has to end after its stdin closed.
ENDING_TIMEOUT = 10.0
#: Seconds an agent left after an error or a cancellation has to end before its Exec call is
#: cancelled (the server then ends its process).
ABANDON_TIMEOUT = 1.0
#: Seconds the agent has to answer its hello (python3 starts in ~30 ms; a server that runs a
#: command only once its whole stdin arrived would never let it answer).
HELLO_TIMEOUT = 20.0


class ExecClient(Protocol):
    """What the agent needs of a client: :meth:`memoh_trio.Client.exec`."""

    async def exec(self, command: str, *, work_dir: str = ..., env: Sequence[str] = ...,
                   timeout_seconds: int = ..., stdin: bytes | AsyncIterable[bytes] = ...,
                   on_output: Callable[[str, bytes], None] | None = ...) -> ExecResult: ...


class Agent:
    """A running agent; use through :func:`open_agent`."""

    def __init__(self, driver: Driver, send: trio.MemorySendChannel[bytes]) -> None:
        self._driver = driver
        self._send = send
        self._waiting: dict[int, tuple[trio.Event, list[Reply]]] = {}
        self._failure: AgentError | None = None
        self._stderr = bytearray()
        self._lock = trio.Lock()  # frames of one request stay together on stdin
        self.ended = trio.Event()  # the Exec call is over
        self.clean = False  # ... after bye, every reply and exit 0

    @property
    def info(self) -> dict[str, Any]:
        """The agent's hello: ``version``, ``pid``, ``python``."""
        return dict(self._driver.agent)

    # -- output (called from the Exec call's output callback) ----------------------------------

    def _on_output(self, name: str, data: bytes) -> None:
        if name == "stderr":
            self._stderr += data
            del self._stderr[:-4096]
            return
        if self._failure is not None:
            return
        self._driver.receive_data(data)
        try:
            while (reply := self._driver.next_reply()) is not None:
                event, slot = self._waiting.pop(reply.id)
                slot.append(reply)
                event.set()
        except AgentError as exc:
            self._fail(exc)

    def _fail(self, exc: AgentError) -> None:
        if self._failure is None:
            self._failure = exc
        for event, _ in self._waiting.values():
            event.set()
        self._waiting.clear()
        self._send.close()

    def _ended(self, result: ExecResult | None, error: BaseException | None) -> None:
        """The Exec call ended (``result``), failed (``error``) or was cancelled (neither):
        check the conversation ended well; fail the waiting."""
        try:
            if result is None and error is None:
                raise AgentCrashed("the Exec call of the container's agent was cancelled "
                                   "(the server ends its process)")
            if error is not None:
                raise AgentCrashed(f"the stream to the container's agent was cut "
                                   f"({self._driver.pending} request(s) unanswered): "
                                   f"{error}") from error
            assert result is not None
            self._driver.output_ended(result.exit_code, bytes(self._stderr))
        except AgentError as exc:
            self._fail(exc)
        else:
            self.clean = True
            self._fail(AgentError("the agent has ended"))
        self.ended.set()

    # -- requests ------------------------------------------------------------------------------

    async def _exchange(self, make: Callable[[], list[tuple[int, bytes]]]) -> list[Reply]:
        """Send the frames ``make()`` gives (together, in order) and wait for their replies."""
        if self._failure is not None:
            raise self._failure
        waits: list[tuple[trio.Event, list[Reply]]] = []
        async with self._lock:
            if self._failure is not None:
                raise self._failure
            sent = make()
            for rid, _ in sent:
                waits.append((trio.Event(), []))
                self._waiting[rid] = waits[-1]
            # The driver counts these requests as sent: a caller cancelled half-way must not
            # leave one unsent (the next reply would then be out of order, and the agent
            # lost). A dead link does not hold this up: its end closes the channel.
            with trio.CancelScope(shield=True):
                try:
                    for _, frame in sent:
                        await self._send.send(frame)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    pass  # the agent has ended: the failure says how
        replies = []
        for event, slot in waits:
            await event.wait()
            if not slot:
                assert self._failure is not None
                raise self._failure
            replies.append(slot[0])
        return replies

    async def hello(self) -> Reply:
        return (await self._exchange(lambda: [self._driver.hello()]))[0]

    async def call(self, op: str, fields: dict[str, Any] | None = None,
                   data: bytes = b"") -> Reply:
        """One request and its reply (the reply's ``ok`` may be False: read its records)."""
        return (await self._exchange(lambda: [self._driver.send(op, fields, data)]))[0]

    async def _records(self, op: str, fields: dict[str, Any], data: bytes = b"") -> list[Record]:
        reply = await self.call(op, fields, data)
        if reply.error and not reply.records:
            raise AgentError(f"the agent refused {op!r}: {reply.error}")
        return list(reply.records)

    async def mkdir(self, entries: Sequence[dict[str, Any]]) -> list[Record]:
        return await self._records("mkdir", {"entries": list(entries)})

    async def files(self, entries: Sequence[dict[str, Any]], data: bytes) -> list[Record]:
        """A batch of small files, back to back in ``data`` (``size`` each)."""
        return await self._records("files", {"entries": list(entries)}, data)

    async def write(self, path: str, content: bytes) -> Record:
        """One file, in frames of :data:`WRITE_CHUNK` (pipelined), to ``path``."""
        view = memoryview(content)
        chunks = max(1, math.ceil(len(view) / WRITE_CHUNK))

        def frames() -> list[tuple[int, bytes]]:
            return [self._driver.send("write", {"path": path, "first": i == 0,
                                                "last": i == chunks - 1},
                                      bytes(view[i * WRITE_CHUNK:(i + 1) * WRITE_CHUNK]))
                    for i in range(chunks)]

        replies = await self._exchange(frames)
        last = replies[-1].header
        bad = next((r for r in replies if not r.ok), None)
        if bad is not None:
            return Record(path, False, bad.error)
        return Record(path, True, None, {"size": last.get("size")})

    async def place(self, entries: Sequence[dict[str, Any]]) -> list[Record]:
        return await self._records("place", {"entries": list(entries)})

    async def symlink(self, entries: Sequence[dict[str, Any]]) -> list[Record]:
        return await self._records("symlink", {"entries": list(entries)})

    async def meta(self, entries: Sequence[dict[str, Any]]) -> list[Record]:
        return await self._records("meta", {"entries": list(entries)})

    async def delete(self, paths: Sequence[str]) -> list[Record]:
        return await self._records("delete", {"paths": list(paths)})

    async def hash(self, paths: Sequence[str]) -> list[Record]:
        """``sha256`` (hex) and ``size`` of each regular file, in its record's ``extra``; a
        missing path fails with ``absent: True``, anything but a regular file (a symlink, never
        followed; a FIFO, a directory) fails."""
        return await self._records("hash", {"paths": list(paths)})

    async def flush(self, how: str = "syncfs") -> Reply:
        """Make what this agent wrote durable: ``syncfs`` of the destination's file system
        (where libc has it), else ``fsync`` of every file it placed and their directories."""
        reply = await self.call("flush", {"how": how})
        if not reply.ok:
            raise AgentError(f"flush failed: {reply.error or [r.error for r in reply.records]}")
        return reply

    async def bye(self) -> None:
        """End the conversation: the agent answers and exits 0."""
        await self._exchange(lambda: [self._driver.bye()])


async def _stdin(receive: trio.MemoryReceiveChannel[bytes]) -> AsyncIterator[bytes]:
    async with receive:
        async for frame in receive:
            yield frame


@contextlib.asynccontextmanager
async def open_agent(client: ExecClient, dest: str = "", *, python: str = "python3",
                     source: str | None = None) -> AsyncIterator[Agent]:
    """Start the agent in the container (one Exec) and hand it over once it said hello.

    ``dest``: the destination directory, relative to the server's working directory (created
    if missing, never through a symlink). ``source``: another agent program (tests).

    Raises:
        AgentVersionMismatch / AgentCrashed / AgentError: it could not start (no python3,
            another version, a broken stream); the block's body does not run.
    """
    send, receive = trio.open_memory_channel[bytes](16)
    agent = Agent(Driver(), send)

    async def run_exec() -> None:
        result: ExecResult | None = None
        error: BaseException | None = None
        try:
            result = await client.exec(command(dest, python=python, source=source),
                                       timeout_seconds=AGENT_TIMEOUT, stdin=_stdin(receive),
                                       on_output=agent._on_output)
        except MemohError as exc:
            error = exc
        finally:  # cancelled too: nobody may wait for an end that will not come
            agent._ended(result, error)

    error: Exception | None = None
    graceful = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_exec)
        try:
            with trio.move_on_after(HELLO_TIMEOUT) as waited:
                await agent.hello()
            if waited.cancelled_caught:
                raise AgentCrashed(f"the container's agent did not answer its hello within "
                                   f"{HELLO_TIMEOUT:g} s (does the server run a command before "
                                   "its input ends?)")
            yield agent
            if agent._failure is None:
                with trio.move_on_after(ENDING_TIMEOUT):
                    await agent.bye()
            graceful = True
        except Exception as exc:  # raised as itself below, not in an ExceptionGroup
            error = exc
        finally:
            send.close()  # end of stdin: an agent still reading ends too
            # After bye, it ends at once; else (an error, a cancellation, a dead link) its Exec
            # call is cancelled soon, and the server ends its process.
            with trio.move_on_after(ENDING_TIMEOUT if graceful else ABANDON_TIMEOUT,
                                    shield=True):
                await agent.ended.wait()
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error
    if not agent.clean:
        raise agent._failure or AgentCrashed("the container's agent did not end in "
                                             f"{ENDING_TIMEOUT} s")
