"""The client side of the agent's protocol, without I/O (as h11's ``Connection``).

:class:`Driver` turns requests into bytes for the agent's stdin (:meth:`Driver.send`) and the
agent's stdout, fed in any pieces (:meth:`Driver.receive_data`), into :class:`Reply` objects
(:meth:`Driver.next_reply`), checking the handshake, the order of the replies and the end of the
stream (:meth:`Driver.output_ended`). Every state rule is here; an illegal step raises and
changes nothing.

States: ``START`` -> (``hello()``) ``HELLO_SENT`` -> (the agent's hello, same version) ``READY``
-> (``bye()``) ``CLOSING`` -> (its reply) ``DONE``; any error -> ``BROKEN``.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .._errors import MemohError
from .agent import PROTOCOL_VERSION, FrameDecoder, FrameError, decode_reply, encode_request

#: Bytes of the agent's stderr kept for an error message.
STDERR_TAIL = 2000


class AgentError(MemohError):
    """The container agent could not be used: it crashed, the stream broke, or it does not
    speak this client's protocol. No entry it had not answered for was done."""


class AgentVersionMismatch(AgentError):
    """The agent in the container speaks another protocol version."""


class AgentCrashed(AgentError):
    """The agent's process ended (or its stream was cut) before it answered every request."""


class AgentUnavailable(AgentCrashed):
    """The container cannot run the agent at all (no python3: the shell's exit 127 before the
    hello). The caller carries on without it, as for a container without python3 today."""


class AgentProtocolError(AgentError):
    """The agent's output is not the protocol (a broken frame, a reply out of order)."""


class State(enum.Enum):
    START = "start"
    HELLO_SENT = "hello sent"
    READY = "ready"
    CLOSING = "closing"
    DONE = "done"
    BROKEN = "broken"


#: Which requests each state allows (Rule 1: every transition is in this module).
_MAY_SEND = {
    State.START: {"hello"},
    # requests may follow the hello at once (pipelined); the agent refuses them all if the
    # handshake fails
    State.HELLO_SENT: {"op", "bye"},
    State.READY: {"op", "bye"},
}


@dataclass(frozen=True)
class Record:
    """What the agent did with one entry."""

    path: str
    ok: bool
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    id: int
    op: str
    ok: bool
    error: str | None
    records: tuple[Record, ...]
    header: dict[str, Any]


def _record(raw: Any) -> Record:
    if not isinstance(raw, dict) or not isinstance(raw.get("path"), str):
        raise AgentProtocolError(f"bad record from the agent: {raw!r}")
    extra = {k: v for k, v in raw.items() if k not in ("path", "ok", "error")}
    return Record(raw["path"], raw.get("ok") is True, raw.get("error"), extra)


class Driver:
    """One agent conversation (see the module doc)."""

    def __init__(self, version: int = PROTOCOL_VERSION) -> None:
        self.version = version
        self.state = State.START
        self.agent: dict[str, Any] = {}  # the agent's hello (pid, python)
        self._decoder = FrameDecoder(decode_reply)
        self._pending: deque[tuple[int, str]] = deque()
        self._next_id = 0

    @property
    def pending(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._pending)

    def _send(self, kind: str, header: dict[str, Any], data: bytes) -> tuple[int, bytes]:
        allowed = _MAY_SEND.get(self.state, set())
        if kind not in allowed:
            raise AgentError(f"cannot send {header.get('op')!r} to the agent now "
                             f"(state: {self.state.value})")
        rid = self._next_id
        frame = encode_request({**header, "id": rid}, data)
        self._next_id += 1
        self._pending.append((rid, str(header["op"])))
        return rid, frame

    def hello(self) -> tuple[int, bytes]:
        """The first frame: this client's protocol version."""
        sent = self._send("hello", {"op": "hello", "version": self.version}, b"")
        self.state = State.HELLO_SENT
        return sent

    def send(self, op: str, fields: dict[str, Any] | None = None,
             data: bytes = b"") -> tuple[int, bytes]:
        """A request: ``(its id, the frame)``."""
        if op in ("hello", "bye"):
            raise AgentError(f"{op!r} has its own method")
        return self._send("op", {**(fields or {}), "op": op}, data)

    def bye(self) -> tuple[int, bytes]:
        """The last request: the agent answers and exits 0."""
        sent = self._send("bye", {"op": "bye"}, b"")
        self.state = State.CLOSING
        return sent

    def receive_data(self, data: bytes) -> None:
        self._decoder.feed(data)

    def next_reply(self) -> Reply | None:
        """The next reply, or None until more output arrives.

        Raises:
            AgentVersionMismatch: the agent refused our version (or announced another).
            AgentProtocolError: a broken frame, a reply nobody asked for or out of order.
        """
        try:
            frame = self._decoder.next()
        except FrameError as exc:
            self.state = State.BROKEN
            raise AgentProtocolError(f"the agent's output is not the protocol: {exc}") from None
        if frame is None:
            return None
        header, _ = frame
        if not self._pending:
            self.state = State.BROKEN
            raise AgentProtocolError(f"the agent answered a request nobody sent: {header!r}")
        rid, op = self._pending[0]
        if header.get("id") != rid or header.get("op") != op:
            self.state = State.BROKEN
            raise AgentProtocolError(f"the agent answered {header.get('op')!r} "
                                     f"#{header.get('id')!r}, expected {op!r} #{rid}")
        try:
            records = tuple(_record(r) for r in header.get("records", ()))
        except AgentProtocolError:
            self.state = State.BROKEN
            raise
        self._pending.popleft()
        reply = Reply(rid, op, header.get("ok") is True, header.get("error"), records, header)
        if op == "hello":
            self._on_hello(reply)
        elif op == "bye":
            self.state = State.DONE
        return reply

    def _on_hello(self, reply: Reply) -> None:
        theirs = reply.header.get("version")
        if theirs != self.version:
            self.state = State.BROKEN
            raise AgentVersionMismatch(
                f"the container's agent speaks protocol version {theirs!r}, this memoh-trio "
                f"{self.version}; hint: use the same memoh-trio on both ends, or let it ship "
                "its own agent")
        if not reply.ok:
            self.state = State.BROKEN
            raise AgentError(f"the agent refused to start: {reply.error}")
        self.agent = dict(reply.header)
        if self.state is State.HELLO_SENT:
            self.state = State.READY

    def output_ended(self, exit_code: int | None, stderr: bytes) -> None:
        """The agent's output ended (the process exited with ``exit_code``, or the stream was
        cut: None). Raises unless the conversation ended with ``bye`` and every reply."""
        if self.state is State.DONE and not self._pending and exit_code == 0:
            return
        was = self.state
        self.state = State.BROKEN
        tail = stderr[-STDERR_TAIL:].decode(errors="replace").strip()
        last = tail.splitlines()[-1] if tail else "no message"
        waiting = f"{len(self._pending)} request(s) unanswered"
        if self._decoder.buffered:
            waiting += f", {self._decoder.buffered} bytes of a cut frame"
        if exit_code is None:
            raise AgentCrashed(f"the stream to the container's agent was cut ({waiting})")
        if was is State.HELLO_SENT and exit_code == 127:
            raise AgentUnavailable("the container has no python3 for the agent (exit 127: "
                                   f"{last}); hint: the shell steps are used without it")
        raise AgentCrashed(f"the container's agent ended with exit {exit_code} ({waiting}): "
                           f"{last}")
