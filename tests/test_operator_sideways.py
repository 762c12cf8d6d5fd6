"""The operator contract, round 2 (issue 26, with items 7 and 8 of issue 23): when things go
sideways. Each case runs the real console script against real servers (memoh-trio's server as a
child process, a stuck or slowed connection, an HTTP/2 server that is not gRPC).
"""

# Test set-up and checks touch the local file system directly, on purpose.

from __future__ import annotations

import contextlib
import functools
import json
import os
import pty
import re
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from faultproxy import open_fault_proxy
from helpers import signal_when
from peers import Peer, memoh_trio_server
from test_operator import (
    SCRIPT,
    _terminate_when,
    also,
    cli,
    cli_env,
    fleet,
    free_port,
    make_tree,
)

from memoh_trio._paths import PART_PREFIX, SERVER_TEMP_PREFIX

UUIDS = ("3f9a6c1e-2b7d-4c7e-9f1a-0123456789ab", "7d1e0f2a-9c3b-4d5e-8f6a-fedcba987654")


def parts_in(root: Path) -> bool:
    """Whether an upload is on its way in ``root`` (its temporary file is there)."""
    return any(name.startswith((PART_PREFIX, SERVER_TEMP_PREFIX))
               for _d, _s, names in os.walk(root) for name in names)


async def _start(argv: list[str], nursery: trio.Nursery, **kwargs: Any) -> trio.Process:
    proc: trio.Process = await nursery.start(functools.partial(
        trio.run_process, [str(SCRIPT), *argv], stdout=-1, stderr=-1, env=cli_env(),
        check=False, **kwargs))
    return proc


# --------------------------------------------------------------------------- 1: a second signal


@pytest.mark.parametrize("as_json", [True, False])
async def test_a_second_signal_stops_at_once_with_a_report(tmp_path: Path, server: Peer,
                                                          as_json: bool) -> None:
    """SIGINT then SIGTERM while a big file crawls through a slow link: exit 130 (the first
    signal), a report (one JSON object with --json), no traceback; nothing renamed."""
    src = make_tree(tmp_path / "bot", {"small": b"s" * 100,
                                       "big": b"\0" * (32 * 1024 * 1024)})
    async with open_fault_proxy(server.target) as proxy:
        proxy.delay = 0.005
        argv = ["migrate", str(src), "--target", proxy.target, *(["--json"] * as_json)]
        async with trio.open_nursery() as nursery:
            proc = await _start(argv, nursery)
            out, err = await signal_when(proc, lambda: parts_in(server.root), 0.3,
                                          [signal.SIGINT, signal.SIGTERM])
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "ExceptionGroup" not in err, err
    assert "SIGTERM again: stopping at once" in err, err
    if as_json:
        report = json.loads(out)
        assert report["status"] == "incomplete" and "second signal" in report["error"]
        assert report["seconds"] > 0
    else:
        assert "not renamed: stopped at once by a second signal" in out, out
    assert src.is_dir() and not (tmp_path / "bot.migrated").exists()


# --------------------------------------------------------------------------- 2: HTTP/2, not gRPC


@contextlib.contextmanager
def http2_404_server() -> Iterator[str]:
    """An HTTP/2 server with no route (an ingress that answers every request ``:status
    404``), on a free port of 127.0.0.1; yields its address."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def handle(sock: socket.socket) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        with sock:
            try:
                sock.sendall(conn.data_to_send())
                while data := sock.recv(65536):
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived):
                            conn.send_headers(event.stream_id, [(":status", "404"),
                                                                ("content-length", "0")],
                                              end_stream=True)
                        elif isinstance(event, h2.events.DataReceived):
                            conn.acknowledge_received_data(event.flow_controlled_length,
                                                           event.stream_id)
                    sock.sendall(conn.data_to_send())
            except (OSError, h2.exceptions.ProtocolError):
                return

    def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(sock,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


@pytest.mark.parametrize("dry_run", [True, False])
async def test_an_http2_server_that_is_not_grpc(tmp_path: Path, dry_run: bool) -> None:
    src = make_tree(tmp_path / "bot", {"a": b"1", "d/b": b"2"})
    with http2_404_server() as target:
        code, out, err = await cli("migrate", str(src), "--target", target,
                                   *(["--dry-run"] * dry_run))
    assert code == 3, (out, err)
    assert f"{target} is not a gRPC server (HTTP/2 status 404)" in err, err
    assert src.is_dir()


# --------------------------------------------------------------------------- 3: fleet -v


async def test_migrate_all_dry_run_itemizes_each_bot(tmp_path: Path, server: Peer) -> None:
    data = fleet(tmp_path, {"alpha": {"a": b"1"}, "beta": {"d/b": b"2"}})
    targets = tmp_path / "t.json"
    targets.write_text(json.dumps({"alpha": server.target, "beta": also(server.target)}))
    code, out, err = await cli("migrate-all", "--data-root", str(data), "--targets",
                               str(targets), "--dry-run", "-v")
    assert code == 0, err
    lines = out.splitlines()
    assert "alpha: >f+++++++++ a" in lines and "beta: >f+++++++++ d/b" in lines, out
    assert os.listdir(server.root) == []


# --------------------------------------------------------------------------- 4: fleet reruns


async def test_a_fleet_rerun_lists_every_bot(tmp_path: Path, server: Peer) -> None:
    data = fleet(tmp_path, {"alpha": {"a": b"1"}, "beta": {"b": b"2"}})
    targets = tmp_path / "t.json"
    targets.write_text(json.dumps({"alpha": server.target, "beta": also(server.target)}))
    argv = ["migrate-all", "--data-root", str(data), "--targets", str(targets)]
    code, _out, err = await cli(*argv, "--json")
    assert code == 0, err
    make_tree(data / "bots" / "gamma", {"c": b"3"})  # a partial rerun: one new bot
    other = tmp_path / "other"
    other.mkdir()
    async with memoh_trio_server(other) as second:
        targets.write_text(json.dumps({"alpha": server.target, "beta": also(server.target),
                                       "gamma": second.target}))
        code, out, err = await cli(*argv, "--json")
    assert code == 0, err
    assert [(r["bot_id"], r["status"]) for r in json.loads(out)] == [
        ("alpha", "already-migrated"), ("beta", "already-migrated"), ("gamma", "migrated")]
    code, out, err = await cli(*argv)
    assert code == 0, err
    assert re.search(r"^bot +status", out, re.MULTILINE), out
    for bot in ("alpha", "beta", "gamma"):
        assert re.search(rf"^{bot} +already-migrated", out, re.MULTILINE), out


# --------------------------------------------------------------------------- 5 + 23.8


async def test_a_stopped_resume_reports_unchanged_files_and_its_duration(
        tmp_path: Path, server: Peer) -> None:
    """3,000 files already at the destination, one big new file crawling through a slow
    link, SIGTERM: the report counts the 3,000 as unchanged, copied files as what was copied
    (none), and the seconds the run took."""
    small = {f"d{i % 30:02}/f{i:05}": b"x" * 10 for i in range(3000)}
    src = make_tree(tmp_path / "bot", small)
    code, _out, err = await cli("migrate", str(src), "--target", server.target, "--no-rename",
                                limit=120)
    assert code == 0, err
    (src / "big").write_bytes(b"\0" * (64 * 1024 * 1024))
    async with open_fault_proxy(server.target) as proxy:
        proxy.delay = 0.005
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            proc = await _start(["migrate", str(src), "--target", proxy.target, "--json"],
                                nursery)
            out, err = await _terminate_when(proc, lambda: parts_in(server.root), 0.5)
            took = trio.current_time() - start
    assert proc.returncode == 143, err
    report = json.loads(out)
    assert report["status"] == "incomplete"
    assert (report["unchanged"], report["files"], report["bytes"]) == (3000, 0, 0), report
    assert 0.5 <= report["seconds"] <= took, (report["seconds"], took)
    assert report["error"] == "stopped by SIGTERM before it finished"
    assert src.is_dir()


# --------------------------------------------------------------------------- 6: the stop message


async def test_the_stop_message_starts_a_clean_line_and_no_frame_follows(
        tmp_path: Path, server: Peer) -> None:
    src = make_tree(tmp_path / "bot", {"big": b"\0" * (64 * 1024 * 1024)})
    primary, secondary = pty.openpty()
    env = {**cli_env(), "TERM": "xterm", "COLUMNS": "100"}
    async with open_fault_proxy(server.target) as proxy:
        proxy.delay = 0.005
        async with trio.open_nursery() as nursery:
            proc: trio.Process = await nursery.start(functools.partial(
                trio.run_process, [str(SCRIPT), "migrate", str(src), "--target", proxy.target],
                stdout=-1, stderr=secondary, env=env, check=False))
            os.close(secondary)
            screen = bytearray()

            async def read_pty() -> None:
                while True:
                    try:
                        chunk = await trio.to_thread.run_sync(os.read, primary, 65536)
                    except OSError:  # the child's side is closed
                        return
                    if not chunk:
                        return
                    screen.extend(chunk)

            nursery.start_soon(read_pty)
            assert proc.stdout is not None
            with trio.fail_after(60):
                while b"files" not in screen or not parts_in(server.root):  # noqa: ASYNC110
                    await trio.sleep(0.05)
                await trio.sleep(1.0)  # a few frames drawn
                proc.send_signal(signal.SIGINT)
                while await proc.stdout.receive_some(65536):
                    pass
                await proc.wait()
    os.close(primary)
    text = screen.decode(errors="replace")
    at = text.index("memoh-trio: SIGINT: stopping")
    before, after = text[:at], text[at:]
    last_line = re.split(r"[\r\n]", before)[-1]
    assert re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", last_line) == "", repr(before[-200:])
    assert "files" not in after, repr(after)
    assert proc.returncode == 130


# --------------------------------------------------------------------------- 7: the table


async def test_the_table_fits_80_columns_and_shows_every_id_whole(tmp_path: Path,
                                                                  server: Peer) -> None:
    data = fleet(tmp_path, {UUIDS[0]: {"a": b"1"}, UUIDS[1]: {"b": b"2"}})
    targets = tmp_path / "t.json"
    targets.write_text(json.dumps({UUIDS[0]: server.target, UUIDS[1]: also(server.target)}))
    code, out, err = await cli("migrate-all", "--data-root", str(data), "--targets",
                               str(targets))
    assert code == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("bot "))
    width = header.index("status")
    table = [line for line in lines if not line.startswith("renamed ")]  # paths: not the table
    assert max(len(line) for line in table) <= 80, out
    column = "".join(line[:width].strip() for line in table[table.index(header) + 2:])
    for uuid in UUIDS:
        assert uuid in column, out


# --------------------------------------------------------------------------- 8: -v and newlines


async def test_itemize_escapes_a_newline_in_a_name(tmp_path: Path, server: Peer) -> None:
    src = make_tree(tmp_path / "bot", {"new\nline.txt": b"1", "tab\there": b"2"})
    code, out, err = await cli("migrate", str(src), "--target", server.target, "--dry-run",
                               "-v")
    assert code == 0, err
    assert sorted(line for line in out.splitlines() if line.startswith(">f")) == [
        ">f+++++++++ new\\#012line.txt", ">f+++++++++ tab\\#011here"], out
    assert "line.txt" not in out.replace("new\\#012line.txt", ""), out


# --------------------------------------------------------------------------- 9: --dest


@pytest.mark.parametrize(("dest", "message"), [
    ("../escape", "has a '..' component"),
    ("a/../../b", "has a '..' component"),
    ("/data/sub", "is an absolute path"),
])
async def test_dest_is_refused_not_rewritten(tmp_path: Path, server: Peer, dest: str,
                                             message: str) -> None:
    src = make_tree(tmp_path / "bot", {"a": b"1"})
    for extra in ([], ["--dry-run"]):
        code, out, err = await cli("migrate", str(src), "--target", server.target, "--dest",
                                   dest, *extra)
        assert code == 2, (extra, out, err)
        assert f"{dest!r} {message}" in err and "hint:" in err, err
    assert os.listdir(server.root) == [] and src.is_dir()


async def test_dest_in_a_fleet_is_refused_before_any_bot(tmp_path: Path, server: Peer) -> None:
    data = fleet(tmp_path, {"alpha": {"a": b"1"}})
    code, _out, err = await cli("migrate-all", "--data-root", str(data), "--target-template",
                                "{bot_id}.invalid:1", "--dest", "../x")
    assert code == 2 and "'..' component" in err, err


# --------------------------------------------------------------------------- 10 + 23.7: targets


async def test_a_targets_key_that_names_no_bot_is_refused(tmp_path: Path, server: Peer) -> None:
    data = fleet(tmp_path, {"bot-alpha": {"a": b"1"}, "bot-beta": {"b": b"2"}})
    targets = tmp_path / "t.json"
    targets.write_text(json.dumps({"bot-alpah": server.target,
                                   "bot-beta": also(server.target)}))
    code, out, err = await cli("migrate-all", "--data-root", str(data), "--targets",
                               str(targets))
    assert code == 2, (out, err)
    assert "names no bot 'bot-alpah'" in err and "did you mean 'bot-alpha'?" in err, err
    assert os.listdir(server.root) == [] and (data / "bots" / "bot-beta").is_dir()


async def test_two_bots_mapped_to_one_container_are_refused(tmp_path: Path,
                                                            server: Peer) -> None:
    data = fleet(tmp_path, {"alpha": {"same": b"alpha"}, "beta": {"same": b"beta"}})
    targets = tmp_path / "t.json"
    targets.write_text(json.dumps({"alpha": server.target, "beta": server.target}))
    code, out, err = await cli("migrate-all", "--data-root", str(data), "--targets",
                               str(targets), "--json")
    assert code == 2, (out, err)
    assert "bots 'alpha' and 'beta' both go to" in err and "overwrite" in err, err
    assert json.loads(out)["exit_code"] == 2
    assert os.listdir(server.root) == []
    assert (data / "bots" / "alpha").is_dir() and (data / "bots" / "beta").is_dir()


async def test_a_template_giving_two_bots_one_address_is_refused(tmp_path: Path) -> None:
    """Host names ignore case: bots ``Edge`` and ``edge`` would land in one container."""
    data = fleet(tmp_path, {"Edge": {"a": b"1"}, "edge": {"a": b"2"}})
    code, _out, err = await cli("migrate-all", "--data-root", str(data), "--target-template",
                                "{bot_id}.bots.internal:9090")
    assert code == 2, err
    assert "bots 'Edge' and 'edge' both go to" in err, err


# --------------------------------------------------------------------------- 11: chunk size


@pytest.mark.parametrize("size", ["10", "16383", "8KiB"])
async def test_a_tiny_chunk_size_is_refused(tmp_path: Path, server: Peer, size: str) -> None:
    src = make_tree(tmp_path / "bot", {"a": b"1"})
    code, _out, err = await cli("migrate", str(src), "--target", server.target,
                                "--chunk-size", size)
    assert code == 2, err
    assert "too small" in err and "16KiB" in err, err
    assert os.listdir(server.root) == []
    code, _out, err = await cli("migrate", str(src), "--target", server.target,
                                "--chunk-size", "16KiB")
    assert code == 0, err


# --------------------------------------------------------------------------- 12: --json errors


async def test_json_after_a_refusal_or_a_lost_connection(tmp_path: Path, server: Peer) -> None:
    src = make_tree(tmp_path / "bot", {"a": b"1"})
    cases: list[tuple[list[str], str | None, int, str]] = [
        (["--target", server.target, "--chunk-size", "10"], None, 2, "too small"),
        (["--target", server.target, "--dest", "../x"], None, 2, "'..' component"),
        (["--target", f"127.0.0.1:{free_port()}"], None, 3, "connection refused"),
        (["--target", server.target], "wrong-token", 4, "UNAUTHENTICATED"),
    ]
    for argv, token, code_wanted, message in cases:
        kwargs: dict[str, Any] = {} if token is None else {"token": token}
        code, out, err = await cli("migrate", str(src), *argv, "--json", **kwargs)
        assert code == code_wanted, (argv, out, err)
        doc = json.loads(out)
        assert doc["exit_code"] == code_wanted and doc["ok"] is False, doc
        assert message in doc["error"], doc
        if code_wanted in (3, 4):
            assert doc["hint"], doc
            [report] = doc["reports"]
            assert report["status"] == "incomplete" and report["files"] == 0, doc
    assert src.is_dir()


# --------------------------------------------------------------------------- 13: fleet exit codes


async def test_a_fleet_with_every_target_unreachable_exits_3_with_hints(tmp_path: Path) -> None:
    data = fleet(tmp_path, {"alpha": {"a": b"1"}, "beta": {"b": b"2"}})
    ports = [free_port(), free_port()]
    targets = tmp_path / "t.json"
    targets.write_text(json.dumps({"alpha": f"127.0.0.1:{ports[0]}",
                                   "beta": f"127.0.0.1:{ports[1]}"}))
    code, out, err = await cli("migrate-all", "--data-root", str(data), "--targets",
                               str(targets), "--json")
    assert code == 3, (out, err)
    assert [r["cause"] for r in json.loads(out)] == ["unreachable", "unreachable"]
    assert f"hint: bot alpha (127.0.0.1:{ports[0]}): nothing listens on" in err, err
    assert f"hint: bot beta (127.0.0.1:{ports[1]}): nothing listens on" in err, err


async def test_a_fleet_with_one_bot_unreachable_exits_1(tmp_path: Path, server: Peer) -> None:
    data = fleet(tmp_path, {"alpha": {"a": b"1"}, "beta": {"b": b"2"}})
    targets = tmp_path / "t.json"
    targets.write_text(json.dumps({"alpha": server.target, "beta": f"127.0.0.1:{free_port()}"}))
    code, out, err = await cli("migrate-all", "--data-root", str(data), "--targets",
                               str(targets), "--json")
    assert code == 1, (out, err)
    assert [r["status"] for r in json.loads(out)] == ["migrated", "incomplete"]


# --------------------------------------------------------------------------- 14: serve --no-auth


async def test_serve_without_auth_on_the_network_needs_the_risk_flag(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    code, out, err = await cli("serve", "--root", str(root), "--listen", "0.0.0.0:0",
                               "--no-auth", token=None)
    assert code == 2 and "--insecure-no-auth-on-network" in err, (out, err)
    code, out, _err = await cli("serve", "--help")
    assert "--insecure-no-auth-on-network" in out and "RISK" in " ".join(out.split())
    src = make_tree(tmp_path / "bot", {"a": b"hello"})
    async with memoh_trio_server(root, "--listen", "0.0.0.0:0", "--no-auth",
                                 "--insecure-no-auth-on-network", token=None) as peer:
        assert peer.target.startswith("0.0.0.0:")
        port = peer.target.rpartition(":")[2]
        code, _out, err = await cli("migrate", str(src), "--target", f"127.0.0.1:{port}",
                                    token=None)
    assert code == 0, err
    assert (root / "a").read_bytes() == b"hello"


# --------------------------------------------------------------------------- 16: one name


async def test_bot_concurrency_has_one_name(tmp_path: Path, server: Peer) -> None:
    data = fleet(tmp_path, {"alpha": {"a": b"1"}, "beta": {"b": b"2"}})
    targets = tmp_path / "t.json"
    targets.write_text(json.dumps({"alpha": server.target, "beta": also(server.target)}))
    code, _out, err = await cli("migrate-all", "--data-root", str(data), "--targets",
                                str(targets), "--bot-concurrency", "1", "--concurrency", "2")
    assert code == 0, err
    code, out, _err = await cli("migrate-all", "--help")
    assert "--bot-concurrency" in out


# --------------------------------------------------------------------------- 17: smaller things


async def test_demo_counts_its_files_as_it_says() -> None:
    code, out, err = await cli("demo", "--files", "20", "--json")
    assert code == 0, err
    assert json.loads(out)["files"] == 23
    assert "(23 files: 20 small ones" in err, err


async def test_bots_that_never_started_say_so(tmp_path: Path, server: Peer) -> None:
    data = fleet(tmp_path, {"a1": {"x": b"1"}, "b-slow": {"big": b"\0" * (64 * 1024 * 1024)},
                            "c-later": {"y": b"2"}})
    async with open_fault_proxy(server.target) as proxy:
        proxy.delay = 0.005
        targets = tmp_path / "t.json"
        targets.write_text(json.dumps({"a1": server.target, "b-slow": proxy.target,
                                       "c-later": also(server.target)}))
        async with trio.open_nursery() as nursery:
            proc = await _start(["migrate-all", "--data-root", str(data), "--targets",
                                 str(targets), "--bot-concurrency", "1", "--json"], nursery)
            out, err = await _terminate_when(proc, lambda: parts_in(server.root), 0.3)
    assert proc.returncode == 143, err
    reports = {r["bot_id"]: r for r in json.loads(out)}
    assert reports["a1"]["status"] == "migrated"
    assert reports["b-slow"]["error"] == "stopped by SIGTERM before it finished"
    assert reports["c-later"]["error"] == ("not started: stopped by SIGTERM before this "
                                           "bot's turn"), reports["c-later"]
    assert reports["b-slow"]["seconds"] > 0


async def test_the_hint_after_a_lost_connection_says_the_server_stopped_answering(
        tmp_path: Path, server: Peer) -> None:
    """The server answered (its listing of the destination), then, while the first file was on
    its way and before anything was confirmed, its connection broke and new ones get no answer
    (a stalled proxy in front of it): the hint says it stopped answering, not "not a gRPC
    server"."""
    src = make_tree(tmp_path / "bot", {"big": b"\0" * (64 * 1024 * 1024)})
    async with open_fault_proxy(server.target) as proxy:
        proxy.delay = 0.005
        argv = ["migrate", str(src), "--target", proxy.target, "--no-tar-batches"]
        async with trio.open_nursery() as nursery:
            proc = await _start(argv, nursery)
            assert proc.stdout is not None and proc.stderr is not None
            with trio.fail_after(60):
                while not parts_in(server.root):  # noqa: ASYNC110
                    await trio.sleep(0.02)
                proxy.stall()  # new connections: accepted, never answered
                proxy.cut()
                err = b""
                while chunk := await proc.stderr.receive_some(65536):
                    err += chunk
                await proc.wait()
    text = err.decode()
    assert proc.returncode == 3, text
    assert "lost the connection" in text and "0 files copied" in text, text
    assert "not a gRPC server" not in text and "answered earlier" in text, text


async def test_serve_listen_port_zero_error_quotes_what_was_typed(tmp_path: Path) -> None:
    code, _out, err = await cli("serve", "--root", str(tmp_path), "--listen", ":0")
    assert code == 2
    assert "malformed listen address ':0': the host is empty" in err, err
