"""The agent's frame codec and the client's driver, without I/O (issue 25)."""

from __future__ import annotations

import ast
import json
import marshal
import shlex
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memoh_trio._agent import PROTOCOL_VERSION, command, source
from memoh_trio._agent.agent import (
    CHECK_FAILED,
    MAX_DATA,
    EntryError,
    FrameDecoder,
    FrameError,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    to_json,
    wanted_sha256,
)
from memoh_trio._agent.driver import (
    AgentCrashed,
    AgentError,
    AgentProtocolError,
    AgentUnavailable,
    AgentVersionMismatch,
    Driver,
    State,
)
from memoh_trio._scripts import records


def frames_of(stream: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """The requests in what a client sent."""
    decoder = FrameDecoder(decode_request)
    decoder.feed(stream)
    out = []
    while (frame := decoder.next()) is not None:
        out.append(frame)
    assert decoder.buffered == 0
    return out


def test_frames_round_trip_fed_one_byte_at_a_time() -> None:
    sent = [({"op": "files", "id": 1, "entries": [{"path": "a", "size": 3}]}, b"abc"),
            ({"op": "mkdir", "id": 2, "ünï": "cödé"}, b""),
            ({"op": "write", "id": 3}, bytes(range(256)) * 300)]
    stream = b"".join(encode_request(h, d) for h, d in sent)
    decoder = FrameDecoder(decode_request)
    got = []
    for i in range(len(stream)):
        decoder.feed(stream[i:i + 1])
        while (frame := decoder.next()) is not None:
            got.append(frame)
    assert got == sent and decoder.buffered == 0


def test_frame_layout_is_two_lengths_then_the_header_then_data() -> None:
    frame = encode_request({"op": "x"}, b"DATA")
    head = marshal.dumps({"op": "x"}, 2)
    assert frame == struct.pack(">II", len(head), 4) + head + b"DATA"
    frame = encode_reply({"op": "x", "ok": True, "records": [{"path": "a\"b", "n": None}]})
    head = b'{"op":"x","ok":true,"records":[{"path":"a\\"b","n":null}]}'
    assert frame == struct.pack(">II", len(head), 0) + head


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_the_agents_json_is_json(header: dict[str, Any]) -> None:
    assert json.loads(to_json(header)) == header
    decoder = FrameDecoder(decode_reply)
    decoder.feed(encode_reply(header))
    assert decoder.next() == (header, b"")


@pytest.mark.parametrize(("decode", "bad"), [
    (decode_reply, struct.pack(">II", 1 << 30, 0)),  # a prefix no frame has: not the protocol
    (decode_reply, struct.pack(">II", 0, MAX_DATA + 1)),
    (decode_reply, struct.pack(">II", 3, 0) + b"{{{"),  # broken JSON
    (decode_reply, struct.pack(">II", 2, 0) + b"[]"),  # not an object
    (decode_request, struct.pack(">II", 3, 0) + b"\xff\x00\x01"),  # broken marshal
    (decode_request, struct.pack(">II", 1, 0) + b"{"),  # a cut dict
    (decode_request, struct.pack(">II", 5, 0) + marshal.dumps(1234, 2)),  # not a dict
])
def test_broken_frames_are_refused(decode: Any, bad: bytes) -> None:
    decoder = FrameDecoder(decode)
    decoder.feed(bad)
    with pytest.raises(FrameError):
        decoder.next()


def test_a_frame_too_large_is_not_encoded() -> None:
    with pytest.raises(FrameError):
        encode_request({"op": "x"}, b"\0" * (MAX_DATA + 1))


def agent_reply(header: dict[str, Any]) -> bytes:
    return encode_reply(header)


def ready_driver() -> Driver:
    d = Driver()
    rid, frame = d.hello()
    assert frames_of(frame) == [({"op": "hello", "version": PROTOCOL_VERSION, "id": rid}, b"")]
    d.receive_data(agent_reply({"op": "hello", "id": rid, "ok": True,
                                "version": PROTOCOL_VERSION, "pid": 7}))
    reply = d.next_reply()
    assert reply is not None and reply.ok and d.state is State.READY
    assert d.agent["pid"] == 7
    return d


def test_handshake_then_pipelined_requests_answered_in_order() -> None:
    d = ready_driver()
    a, fa = d.send("mkdir", {"entries": [{"path": "x"}]})
    b, fb = d.send("files", {"entries": [{"path": "x/.t", "size": 2, "final": "x/f"}]}, b"hi")
    assert frames_of(fa + fb)[1] == ({"entries": [{"path": "x/.t", "size": 2, "final": "x/f"}],
                                      "op": "files", "id": b}, b"hi")
    assert d.pending == 2
    both = agent_reply({"op": "mkdir", "id": a, "ok": True,
                        "records": [{"path": "x", "ok": True}]}) + \
        agent_reply({"op": "files", "id": b, "ok": False, "records": [
            {"path": "x/f", "ok": False, "error": "a symlink is in the way at 'x'"}]})
    d.receive_data(both[:5])
    assert d.next_reply() is None  # not a whole frame yet
    d.receive_data(both[5:])
    first, second = d.next_reply(), d.next_reply()
    assert first is not None and first.records[0].ok
    assert second is not None and not second.ok
    assert second.records[0].error == "a symlink is in the way at 'x'"
    assert d.next_reply() is None and d.pending == 0
    rid, _ = d.bye()
    assert d.state is State.CLOSING
    d.receive_data(agent_reply({"op": "bye", "id": rid, "ok": True}))
    assert d.next_reply() is not None
    assert d.state.value == "done"
    d.output_ended(0, b"")  # a clean end raises nothing


def test_requests_may_follow_the_hello_before_its_answer() -> None:
    d = Driver()
    d.hello()
    rid, _ = d.send("mkdir", {"entries": []})
    assert rid == 1 and d.pending == 2


@pytest.mark.parametrize("theirs", [PROTOCOL_VERSION + 1, None, "1"])
def test_another_version_is_a_clear_error(theirs: object) -> None:
    d = Driver()
    rid, _ = d.hello()
    d.receive_data(agent_reply({"op": "hello", "id": rid, "ok": theirs is None,
                                "version": theirs}))
    with pytest.raises(AgentVersionMismatch, match="protocol version"):
        d.next_reply()
    assert d.state is State.BROKEN
    with pytest.raises(AgentError, match="cannot send"):
        d.send("mkdir")


def test_the_agent_refusing_our_version_is_a_mismatch() -> None:
    d = Driver(version=PROTOCOL_VERSION + 5)
    rid, _ = d.hello()
    # the real agent answers with its own version and ok false
    d.receive_data(agent_reply({"op": "hello", "id": rid, "ok": False,
                                "version": PROTOCOL_VERSION, "error": "the agent speaks ..."}))
    with pytest.raises(AgentVersionMismatch, match=f"version {PROTOCOL_VERSION}, this"):
        d.next_reply()


@pytest.mark.parametrize("reply", [
    {"op": "mkdir", "id": 5, "ok": True},  # an id nobody sent
    {"op": "files", "id": 1, "ok": True},  # the right id, another operation
    {"op": "mkdir", "id": 1, "ok": True, "records": [{"ok": True}]},  # a record without a path
])
def test_replies_out_of_order_or_malformed_break_the_conversation(reply: dict[str, Any]) -> None:
    d = ready_driver()
    d.send("mkdir", {"entries": []})
    d.receive_data(agent_reply(reply))
    with pytest.raises(AgentProtocolError):
        d.next_reply()
    assert d.state is State.BROKEN


def test_a_reply_nobody_asked_for() -> None:
    d = ready_driver()
    d.receive_data(agent_reply({"op": "mkdir", "id": 1, "ok": True}))
    with pytest.raises(AgentProtocolError, match="nobody sent"):
        d.next_reply()


def test_garbage_on_stdout_is_a_protocol_error() -> None:
    d = Driver()
    d.hello()
    d.receive_data(b"Traceback (most recent call last):\n" * 3)
    with pytest.raises(AgentProtocolError, match="not the protocol"):
        d.next_reply()


def test_a_rejected_step_changes_nothing() -> None:
    d = Driver()
    with pytest.raises(AgentError, match="state: start"):
        d.send("mkdir")
    assert d.state is State.START and d.pending == 0
    with pytest.raises(AgentError, match="own method"):
        d.send("hello")
    rid, _ = d.hello()
    assert rid == 0  # no id was used by the refused requests
    with pytest.raises(AgentError, match="state: hello sent"):
        d.hello()
    assert d.pending == 1 and d.state.value == "hello sent"


@pytest.mark.parametrize(("code", "stderr", "match"), [
    (1, b"Traceback ...\nZeroDivisionError: division by zero\n",
     "exit 1 .*1 request\\(s\\) unanswered.*ZeroDivisionError"),
    (137, b"", "exit 137.*no message"),
    (None, b"", "stream to the container's agent was cut"),
])
def test_an_agent_that_ends_early(code: int | None, stderr: bytes, match: str) -> None:
    d = ready_driver()
    d.send("mkdir", {"entries": []})
    with pytest.raises(AgentCrashed, match=match):
        d.output_ended(code, stderr)
    assert d.state is State.BROKEN


def test_no_python3_in_the_container() -> None:
    d = Driver()
    d.hello()
    with pytest.raises(AgentUnavailable, match=r"no python3 .*exit 127"):
        d.output_ended(127, b"sh: exec: line 0: python3: not found\n")


def test_a_cut_frame_is_reported() -> None:
    d = ready_driver()
    d.send("mkdir", {"entries": []})
    d.receive_data(agent_reply({"op": "mkdir", "id": 1, "ok": True})[:7])
    assert d.next_reply() is None
    with pytest.raises(AgentCrashed, match="7 bytes of a cut frame"):
        d.output_ended(0, b"")


def test_ending_with_exit_0_but_without_bye_is_a_crash() -> None:
    d = ready_driver()
    with pytest.raises(AgentCrashed, match="exit 0"):
        d.output_ended(0, b"")


def test_the_command_runs_the_shipped_source_as_python3_itself() -> None:
    words = shlex.split(command("bots/x y"))
    assert words == ["exec", "python3", "-S", "-c", source(), "bots/x y"]
    assert shlex.split(command("", python="/usr/bin/python3.12"))[1] == "/usr/bin/python3.12"
    # the source is the module itself: stdlib imports only
    imports = [line.split()[1] for line in source().splitlines()
               if line.startswith(("import ", "from "))]
    assert set(imports) <= {"__future__", "errno", "marshal", "os", "stat",
                            "sys"}, imports  # and nothing heavy: not json, typing, struct
    assert len(command("d").encode()) < 128 * 1024  # one argv string (MAX_ARG_STRLEN)


def test_the_agent_is_python_3_8_syntax() -> None:
    # it runs on the container's python3, which may be older than the client's (3.11+);
    # tests/test_agent.py runs it on every python3 from 3.8 the machine has
    ast.parse(source(), feature_version=(3, 8))


def test_check_failed_is_the_one_the_lifecycle_tells_apart() -> None:
    # the lifecycle reads a record's error beginning with it as "the bytes were bad", as it
    # reads the python3 mover's; the agent cannot import it (it runs alone in the container)
    assert CHECK_FAILED == records.CHECK_FAILED


@pytest.mark.parametrize("value", ["0" * 64, "0123456789abcdef" * 4, None])
def test_a_sha256_is_64_lowercase_hex_digits(value: str | None) -> None:
    entry = {"path": "x"} if value is None else {"path": "x", "sha256": value}
    assert wanted_sha256(entry) == value


@pytest.mark.parametrize("value", ["0" * 63, "0" * 65, "A" * 64, "g" * 64, "", 1, ["0" * 64],
                                   " " + "0" * 63])
def test_anything_else_is_refused_and_not_a_failed_check(value: object) -> None:
    with pytest.raises(EntryError, match="bad sha256") as err:
        wanted_sha256({"path": "x", "sha256": value})
    assert not str(err.value).startswith(CHECK_FAILED)


def test_a_hash_reply_carries_the_digest_and_absent_in_its_records() -> None:
    d = ready_driver()
    rid, frame = d.send("hash", {"paths": ["a", "gone"]})
    assert frames_of(frame) == [({"paths": ["a", "gone"], "op": "hash", "id": rid}, b"")]
    d.receive_data(agent_reply({"op": "hash", "id": rid, "ok": False, "records": [
        {"path": "a", "ok": True, "sha256": "ab" * 32, "size": 3},
        {"path": "gone", "ok": False, "error": "'gone' does not exist", "absent": True}]}))
    reply = d.next_reply()
    assert reply is not None and not reply.ok
    assert [(r.ok, r.extra) for r in reply.records] == [
        (True, {"sha256": "ab" * 32, "size": 3}), (False, {"absent": True})]


async def test_a_request_whose_caller_is_cancelled_is_still_sent_whole() -> None:
    """The driver counts a request as sent once its frames are made: a caller cancelled while
    they go down the stream must not leave one unsent, or the next reply is out of order and
    the agent is lost (seen under load: the early flush, cancelled with the copy it ran beside,
    lost the agent for the run's last metadata batch)."""
    import trio

    from memoh_trio._agent.agent import FrameDecoder, decode_request
    from memoh_trio._agent.session import Agent

    send, receive = trio.open_memory_channel[bytes](0)  # nobody reads yet: the send waits
    agent = Agent(Driver(), send)
    agent._driver.hello()
    got: list[bytes] = []

    async def read_later() -> None:
        await trio.sleep(0.3)
        with trio.move_on_after(1):
            got.append(await receive.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_later)
        with trio.move_on_after(0.1) as scope:
            await agent.call("flush", {"how": "syncfs"})
    assert scope.cancelled_caught and len(got) == 1, got
    decoder = FrameDecoder(decode_request)
    decoder.feed(got[0])
    frame = decoder.next()
    assert frame is not None and frame[0]["op"] == "flush"
