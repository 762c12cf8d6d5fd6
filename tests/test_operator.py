"""The operator contract (issue 13): what an operator types by habit, through the real console
script against our real server (a child process that requires a token, given to both sides
through MEMOH_TRIO_TOKEN).
"""

# Test set-up and checks touch the local file system directly, on purpose.

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import signal_when
from peers import TEST_TOKEN, Peer, memoh_trio_server

SCRIPT = Path(sys.executable).parent / "memoh-trio"


def cli_env(token: str | None = TEST_TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MEMOH_TRIO_TOKEN"}
    if token is not None:
        env["MEMOH_TRIO_TOKEN"] = token
    return env


async def cli(*args: str, token: str | None = TEST_TOKEN, limit: float = 60,
              **kwargs: Any) -> tuple[int, str, str]:
    """Run the ``memoh-trio`` console script; return (exit code, stdout, stderr)."""
    with trio.fail_after(limit):
        proc = await trio.run_process([str(SCRIPT), *args], capture_stdout=True,
                                      capture_stderr=True, check=False, env=cli_env(token),
                                      stdin=b"", **kwargs)
    return proc.returncode, proc.stdout.decode(errors="replace"), \
        proc.stderr.decode(errors="replace")


def make_tree(top: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = top / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return top


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- reruns and typos


async def test_rerun_after_success_is_already_migrated(tmp_path: Path, server: Peer) -> None:
    src = make_tree(tmp_path / "bot", {"a": b"1", "d/b": b"2"})
    code, _out, err = await cli("migrate", str(src), "--target", server.target)
    assert code == 0, err
    assert not src.exists() and (tmp_path / "bot.migrated").is_dir()
    code, out, err = await cli("migrate", str(src), "--target", server.target, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["status"] == "already-migrated" and report["ok"]


async def test_migrating_the_migrated_directory_is_refused(tmp_path: Path,
                                                           server: Peer) -> None:
    done = make_tree(tmp_path / "bot.migrated", {"a": b"1"})
    code, out, err = await cli("migrate", str(done), "--target", server.target)
    assert code == 2, err
    assert "rename it back to" in err and str(tmp_path / "bot") in err
    assert out == "" and os.listdir(server.root) == []
    assert not (tmp_path / "bot.migrated.migrated").exists()


async def test_source_next_to_its_migrated_sibling_is_refused_before_copying(
        tmp_path: Path, server: Peer) -> None:
    src = make_tree(tmp_path / "both", {"a": b"1" * 1000})
    make_tree(tmp_path / "both.migrated", {"a": b"old"})
    code, _out, err = await cli("migrate", str(src), "--target", server.target)
    assert code == 2, err
    assert "both" in err and "Move one of them aside" in err
    assert os.listdir(server.root) == []  # nothing was copied
    assert (src / "a").exists()


async def test_empty_source_is_nothing_to_do_for_migrate_and_migrate_bot(
        tmp_path: Path, server: Peer) -> None:
    empty = tmp_path / "data" / "bots" / "quiet"
    empty.mkdir(parents=True)
    code, out, err = await cli("migrate", str(empty), "--target", server.target, "--json")
    assert code == 0, err
    assert json.loads(out)["status"] == "nothing-to-do"
    code, out, err = await cli("migrate-bot", "quiet", "--data-root", str(tmp_path / "data"),
                               "--target", server.target, "--json")
    assert code == 0, err
    assert [r["status"] for r in json.loads(out)] == ["nothing-to-do"]
    assert empty.is_dir() and not (tmp_path / "data" / "bots" / "quiet.migrated").exists()


async def test_migrate_bot_bad_data_root_and_typo(tmp_path: Path, server: Peer) -> None:
    data = tmp_path / "data"
    make_tree(data / "bots" / "alpha", {"x": b"1"})
    make_tree(data / "bots" / "beta", {"x": b"1"})
    cases = [
        (["alpha", "--data-root", str(tmp_path / "nope")], "does not exist"),
        (["alpha", "--data-root", str(tmp_path)], "has no bots/ directory"),
        (["alpha", "--data-root", str(data / "bots")], f"try --data-root {data}"),
        (["alpah", "--data-root", str(data)], "did you mean 'alpha'"),
    ]
    for argv, hint in cases:
        code, out, err = await cli("migrate-bot", *argv, "--target", server.target)
        assert code == 2, (argv, err)
        assert hint in err, (argv, err)
        assert out == ""
    assert os.listdir(server.root) == []


async def test_migrate_all_one_level_too_deep(tmp_path: Path, server: Peer) -> None:
    data = tmp_path / "data"
    make_tree(data / "bots" / "alpha", {"x": b"1"})
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps({"alpha": server.target}))
    code, out, err = await cli("migrate-all", "--data-root", str(data / "bots"), "--targets",
                               str(targets))
    assert code == 2, err
    assert f"try --data-root {data}" in err and out == ""
    code, _out, err = await cli("migrate-all", "--data-root", str(tmp_path / "nope"),
                                "--targets", str(targets))
    assert code == 2 and "does not exist" in err, err


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
async def test_timeout_must_be_positive(tmp_path: Path, value: str) -> None:
    src = make_tree(tmp_path / "bot", {"a": b"1"})
    code, _out, err = await cli("migrate", str(src), "--target", "127.0.0.1:1", "--timeout",
                                value)
    assert code == 2, err
    assert "--timeout" in err and "seconds" in err
    assert err.count("\n") == 2 and "see 'memoh-trio migrate --help'" in err


async def test_dest_naming_a_file_is_a_usage_error(tmp_path: Path, server: Peer) -> None:
    src = make_tree(tmp_path / "bot", {"a": b"1"})
    (server.root / "afile").write_bytes(b"x")
    for extra in ([], ["--dry-run"]):
        code, _out, err = await cli("migrate", str(src), "--target", server.target, "--dest",
                                    "afile", *extra)
        assert code == 2, (extra, err)
        assert "'afile' is a file" in err, err
    assert src.is_dir() and (server.root / "afile").read_bytes() == b"x"


async def test_version_and_concurrency_default() -> None:
    from memoh_trio import DEFAULT_CONCURRENCY, __version__

    code, out, _err = await cli("--version")
    assert code == 0 and out.strip() == f"memoh-trio {__version__}"
    code, out, _err = await cli("migrate", "--help")
    assert code == 0 and f"(default: {DEFAULT_CONCURRENCY})" in " ".join(out.split())


@pytest.mark.parametrize(("argv", "message", "command"), [
    (["migrate", "x", "--target", "h:1", "--bogus"], "unrecognized arguments: --bogus",
     "migrate"),
    (["migrate-all", "--data-root", "x"], "one of the arguments", "migrate-all"),
    ([], "required: COMMAND", ""),
])
async def test_usage_errors_are_one_line_and_a_pointer(argv: list[str], message: str,
                                                       command: str) -> None:
    code, out, err = await cli(*argv)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("memoh-trio: error:") and message in lines[0]
    assert lines[1] == f"see '{' '.join(['memoh-trio', command]).strip()} --help'"


@pytest.mark.parametrize("template", ["HOST:{bot_id}:PORT", "h:{bot_id}", "nohost",
                                      "{bot_id}.x:99999"])
async def test_bad_template_is_quoted_as_typed(tmp_path: Path, template: str) -> None:
    code, _out, err = await cli("migrate-all", "--data-root", str(tmp_path),
                                "--target-template", template)
    assert code == 2, err
    assert repr(template) in err and "'{bot_id}.bots.internal:9090'" in err
    assert "'x'" not in err.replace(repr(template), "")


async def test_documented_template_form_works(tmp_path: Path, server: Peer) -> None:
    """``{bot_id}`` in the host: with bot ids that are host names (here 127.0.0.1 split in
    two: bot id ``127.0.0`` and the template ``{bot_id}.1:PORT``)."""
    data = tmp_path / "data"
    src = make_tree(data / "bots" / "127.0.0", {"a": b"hello"})
    port = server.target.rpartition(":")[2]
    code, out, err = await cli("migrate-all", "--data-root", str(data), "--target-template",
                               f"{{bot_id}}.1:{port}", "--json")
    assert code == 0, err
    assert [r["bot_id"] for r in json.loads(out)] == ["127.0.0"]
    assert not src.exists() and (server.root / "a").read_bytes() == b"hello"


# --------------------------------------------------------------------------- skipped entries


@pytest.mark.parametrize("preserve", [True, False])
async def test_directory_holding_only_a_socket_or_fifo_is_created(
        tmp_path: Path, server: Peer, preserve: bool) -> None:
    src = make_tree(tmp_path / "bot", {"a": b"1"})
    (src / "run").mkdir()
    (src / "pipes").mkdir()
    os.mkfifo(src / "pipes" / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "run" / "s.sock"))
    try:
        code, out, err = await cli("migrate", str(src), "--target", server.target, "--json",
                                   *([] if preserve else ["--no-preserve"]))
    finally:
        sock.close()
    assert code == 0, (out, err)
    report = json.loads(out)
    assert report["status"] == "migrated" and report["failures"] == []
    assert sorted(s["path"] for s in report["skipped"]) == ["pipes/fifo", "run/s.sock"]
    assert (server.root / "run").is_dir() and (server.root / "pipes").is_dir()
    assert os.listdir(server.root / "run") == [] and os.listdir(server.root / "pipes") == []


# --------------------------------------------------------------------------- dry run


async def test_dry_run_predicts_resume_and_itemizes(tmp_path: Path, server: Peer) -> None:
    src = make_tree(tmp_path / "bot", {"same": b"s" * 10, "new": b"n", "d/changed": b"c" * 5})
    (src / "empty").mkdir()
    (src / "link").symlink_to("same")
    make_tree(server.root, {"same": b"s" * 10, "d/changed": b"old"})
    st = os.stat(src / "same")
    os.utime(server.root / "same", ns=(st.st_atime_ns, st.st_mtime_ns))
    code, out, err = await cli("migrate", str(src), "--target", server.target, "--dry-run",
                               "-v")
    assert code == 0, err
    lines = set(out.splitlines())
    assert {">f+++++++++ new", "cd+++++++++ empty/", "cL+++++++++ link -> same",
            "cd+++++++++ d/"} <= lines, out
    assert any(line.startswith(">f.s") and line.endswith(" d/changed") for line in lines), out
    assert not any(line.startswith(">f") and line.endswith(" same") for line in lines), out
    code, out, err = await cli("migrate", str(src), "--target", server.target, "--dry-run",
                               "--json")
    report = json.loads(out)
    assert (report["status"], report["unchanged"], report["files"]) == ("dry-run", 1, 2)
    assert src.is_dir() and (server.root / "d" / "changed").read_bytes() == b"old"


async def test_dry_run_checks_the_token(tmp_path: Path, server: Peer) -> None:
    src = make_tree(tmp_path / "bot", {"a": b"1"})
    code, _out, err = await cli("migrate", str(src), "--target", server.target, "--dry-run",
                                token="wrong")
    assert code == 4, err
    assert "MEMOH_TRIO_TOKEN" in err


async def test_itemize_needs_dry_run(tmp_path: Path, server: Peer) -> None:
    src = make_tree(tmp_path / "bot", {"a": b"1"})
    code, _out, err = await cli("migrate", str(src), "--target", server.target, "-v")
    assert code == 2 and "--dry-run" in err
    assert src.is_dir()


# --------------------------------------------------------------------------- fleet runs


def also(target: str) -> str:
    """The same server under another name (two bots may not share one address: one container
    would take both bots' files; here their files do not collide)."""
    return target.replace("127.0.0.1", "localhost")


def fleet(tmp_path: Path, bots: dict[str, dict[str, bytes]]) -> Path:
    data = tmp_path / "data"
    for bot, files in bots.items():
        make_tree(data / "bots" / bot, files)
    return data


async def test_json_is_an_array_with_bot_ids(tmp_path: Path, server: Peer) -> None:
    data = fleet(tmp_path, {"b1": {"x": b"1"}, "b2": {"y": b"2"}})
    code, out, err = await cli("migrate-bot", "b1", "--data-root", str(data), "--target",
                               server.target, "--json")
    assert code == 0, err
    assert [(r["bot_id"], r["status"]) for r in json.loads(out)] == [("b1", "migrated")]
    targets = tmp_path / "t.json"
    targets.write_text(json.dumps({"b2": server.target}))
    code, out, err = await cli("migrate-all", "--data-root", str(data), "--targets",
                               str(targets), "--json")
    assert code == 0, err
    assert [(r["bot_id"], r["status"]) for r in json.loads(out)] == [
        ("b1", "already-migrated"), ("b2", "migrated")]


async def test_fleet_lines_and_failed_lines_name_the_bot(tmp_path: Path, server: Peer) -> None:
    data = fleet(tmp_path, {"good": {"x": b"1"}, "bad": {"y": b"2"}})
    (data / "bots" / "bad" / "\udcff".encode("utf-8", "surrogateescape").decode(
        "utf-8", "surrogateescape")).write_bytes(b"z")
    targets = tmp_path / "t.json"
    targets.write_text(json.dumps({"good": server.target, "bad": also(server.target)}))
    code, out, err = await cli("migrate-all", "--data-root", str(data), "--targets",
                               str(targets))
    assert code == 1, err
    assert "good: migrated, 1 file, 1 B" in err  # one line per bot as it finishes (stderr)
    assert "bad: incomplete" in err
    assert "FAILED   bad: \\xff: name is not valid UTF-8" in out, out


async def test_sigterm_mid_fleet_reports_what_was_renamed(tmp_path: Path,
                                                          server: Peer) -> None:
    """Bots run one at a time; the last one stalls (its server stops reading), SIGTERM: the
    report says which bots were renamed and which were not, also as JSON."""
    data = fleet(tmp_path, {"a1": {"x": b"1"}, "a2": {"y": b"2"},
                            "z-slow": {"big": os.urandom(64 * 1024 * 1024)}})
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(16)  # accepts connections, never answers: z-slow hangs in its first call
    try:
        targets = tmp_path / "t.json"
        targets.write_text(json.dumps({
            "a1": server.target, "a2": also(server.target),
            "z-slow": f"127.0.0.1:{stuck.getsockname()[1]}"}))
        for as_json in (False, True):
            for done in (data / "bots").glob("*.migrated"):  # the first round renamed them
                done.rename(str(done).removesuffix(".migrated"))
            argv = [str(SCRIPT), "migrate-all", "--data-root", str(data), "--targets",
                    str(targets), "--bots", "1", *(["--json"] if as_json else [])]
            async with trio.open_nursery() as nursery:
                proc: trio.Process = await nursery.start(functools.partial(
                    trio.run_process, argv, stdout=-1, stderr=-1, env=cli_env(), check=False))
                out, err = await _collect_until(proc, data)
            assert proc.returncode == 143, err
            if as_json:
                reports = {r["bot_id"]: r for r in json.loads(out)}
                assert reports["a1"]["status"] == "migrated"
                assert reports["a2"]["status"] == "migrated"
                assert reports["z-slow"]["status"] == "incomplete"
                assert "SIGTERM" in reports["z-slow"]["error"]
            else:
                assert "a2: migrated" in err  # the per-bot line, as it finished
                assert "nothing is renamed" not in err
                assert f"renamed  {data}/bots/a1 → a1.migrated" in out, out
                assert "z-slow: not renamed: stopped by SIGTERM" in out.replace(
                    f"{data}/bots/", ""), out
        assert (data / "bots" / "z-slow").is_dir()
        assert (data / "bots" / "a1.migrated").is_dir()
    finally:
        stuck.close()


async def test_sigterm_mid_fleet_counts_what_a_running_bot_copied(tmp_path: Path,
                                                                  server: Peer) -> None:
    """A bot stopped mid-way reports the files and bytes it had copied, not 0: its small files
    are in place, its big one is still on its way (through a proxy that holds every read 5 ms)
    when SIGTERM stops the fleet. Its source is not renamed."""
    from faultproxy import open_fault_proxy

    small = {f"s{i:02}": b"x" * 100 for i in range(12)}
    data = fleet(tmp_path, {"a1": {"x": b"1"},
                            "z-slow": {**small, "big": b"\0" * (64 * 1024 * 1024)}})
    container = tmp_path / "container"
    async with open_fault_proxy(server.target) as proxy:
        proxy.delay = 0.005  # at most 64 KiB per 5 ms: the big file takes seconds
        targets = tmp_path / "t.json"
        targets.write_text(json.dumps({"a1": server.target, "z-slow": proxy.target}))
        argv = [str(SCRIPT), "migrate-all", "--data-root", str(data), "--targets",
                str(targets), "--bots", "1", "--json"]
        async with trio.open_nursery() as nursery:
            proc: trio.Process = await nursery.start(functools.partial(
                trio.run_process, argv, stdout=-1, stderr=-1, env=cli_env(), check=False))
            # 0.5 s after the small files are in place: their batch's answer reached the client
            out, err = await _terminate_when(
                proc, lambda: all((container / name).is_file() for name in small), 0.5)
    assert proc.returncode == 143, err
    reports = {r["bot_id"]: r for r in json.loads(out)}
    assert reports["a1"]["status"] == "migrated"
    slow = reports["z-slow"]
    assert slow["status"] == "incomplete"
    assert slow["error"] == "stopped by SIGTERM before it finished"
    # The small files, not the big one (its bytes sent so far do not count: it is not there).
    assert (slow["files"], slow["bytes"]) == (len(small), 100 * len(small)), err
    assert not (container / "big").exists()
    assert (data / "bots" / "z-slow").is_dir()
    assert not (data / "bots" / "z-slow.migrated").exists()


async def _collect_until(proc: trio.Process, data: Path) -> tuple[str, str]:
    """Read the child's output; SIGTERM it once both fast bots are renamed (the slow one is
    then stuck); return (stdout, stderr) when it exits."""
    return await _terminate_when(proc, lambda: (data / "bots" / "a2.migrated").is_dir(), 0.3)


async def _terminate_when(proc: trio.Process, ready: Callable[[], bool],
                          settle: float) -> tuple[str, str]:
    """Read the child's output; SIGTERM it ``settle`` seconds after ``ready()`` turned true;
    return (stdout, stderr) when it exits."""
    return await signal_when(proc, ready, settle, [signal.SIGTERM])


# --------------------------------------------------------------------------- errors


async def test_connection_refused_hint(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "bot", {"a": b"1"})
    port = free_port()
    code, _out, err = await cli("migrate", str(src), "--target", f"127.0.0.1:{port}")
    assert code == 3, err
    assert "hint: nothing listens on" in err and f"--listen 127.0.0.1:{port}" in err


async def test_not_a_grpc_server(tmp_path: Path) -> None:
    import http.server
    import threading

    src = make_tree(tmp_path / "bot", {"a": b"1"})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        code, _out, err = await cli("migrate", str(src), "--target",
                                    f"127.0.0.1:{httpd.server_address[1]}")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert code == 3, err
    assert "is not a gRPC server" in err, err
    assert src.is_dir()


async def test_tls_mismatch_says_which_side_expects_tls(tmp_path: Path) -> None:
    from _certs import make_certs

    certs = make_certs(tmp_path / "certs")
    src = make_tree(tmp_path / "bot", {"a": b"1"})
    root = tmp_path / "root"
    root.mkdir()
    async with memoh_trio_server(root, "--tls-cert", str(certs.server_cert), "--tls-key",
                                 str(certs.server_key)) as tls_server:
        code, _out, err = await cli("migrate", str(src), "--target", tls_server.target)
    assert code == 3, err
    assert "expects TLS and the client spoke plaintext" in err, err
    async with memoh_trio_server(root) as plain_server:
        code, _out, err = await cli("migrate", str(src), "--target", plain_server.target,
                                    "--tls-ca", str(certs.ca))
    assert code == 3, err
    assert "speaks plaintext HTTP/2 and the client expects TLS" in err, err


async def test_serve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    async with memoh_trio_server(root) as peer:
        peer.process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            code = await peer.process.wait()
    assert code == 0


async def test_sigint_single_migrate_prints_a_partial_json_report(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "bot", {"a": b"1"})
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(16)  # accepts connections, never answers
    try:
        argv = [str(SCRIPT), "migrate", str(src), "--target",
                f"127.0.0.1:{stuck.getsockname()[1]}", "--json"]
        async with trio.open_nursery() as nursery:
            proc: trio.Process = await nursery.start(functools.partial(
                trio.run_process, argv, stdout=-1, stderr=-1, env=cli_env(), check=False))
            assert proc.stdout is not None and proc.stderr is not None
            await trio.sleep(1.5)  # started, stuck in its first call
            proc.send_signal(signal.SIGINT)
            with trio.fail_after(30):
                out = b""
                while chunk := await proc.stdout.receive_some(65536):
                    out += chunk
                err = await proc.stderr.receive_some(65536)
                await proc.wait()
    finally:
        stuck.close()
    assert proc.returncode == 130, err
    report = json.loads(out)
    assert (report["status"], report["ok"]) == ("incomplete", False)
    assert report["error"] == "stopped by SIGINT before it finished"
    assert b"the source is not renamed" in err
    assert src.is_dir() and not (tmp_path / "bot.migrated").exists()
