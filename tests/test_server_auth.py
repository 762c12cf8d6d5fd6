"""Authentication is explicit (issue 11, item 6), end to end with real ``memoh-trio serve``
processes, plus the pure refusal rules.

A server never runs Exec for an unauthenticated client by accident: without a token
(``--token``, ``--token-file``, ``$MEMOH_TRIO_TOKEN``) it refuses to start unless ``--no-auth``
says so; ``--no-exec`` turns Exec off; a non-loopback address needs a token or TLS.
"""

# Test set-up touches the local file system directly, on purpose.
# ruff: noqa: ASYNC240

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio
from peers import TEST_TOKEN, memoh_trio_serve_cmd, memoh_trio_server, serve_env

import memoh_trio
from memoh_trio import _errors
from memoh_trio._cli import EXIT_USAGE, build_parser, read_token_file, resolve_token
from memoh_trio._errors import ConfigError
from memoh_trio._server import check_exposure, check_token, is_loopback
from memoh_trio.testing import running_server

# --------------------------------------------------------------------------- pure rules


def test_check_token_rules() -> None:
    check_token("t0k3n", False)
    check_token(None, True)
    with pytest.raises(ConfigError, match=r"refusing to serve without authentication.*hint"):
        check_token(None, False)
    with pytest.raises(ConfigError, match="contradict"):
        check_token("t", True)
    for bad in ("", "two words", "new\nline", "caf\u00e9"):
        with pytest.raises(ConfigError, match="printable ASCII"):
            check_token(bad, False)


@pytest.mark.parametrize(("addr", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("0.0.0.0", False),
    ("::", False), ("10.1.2.3", False), ("fe80::1%eth0", False), ("not-an-ip", False),
])
def test_is_loopback(addr: str, loopback: bool) -> None:
    assert is_loopback(addr) is loopback


def test_check_exposure_rules() -> None:
    check_exposure("localhost", ["127.0.0.1", "::1"], token=None, tls=False)
    check_exposure("0.0.0.0", ["0.0.0.0"], token="t", tls=False)
    check_exposure("0.0.0.0", ["0.0.0.0"], token=None, tls=True)
    with pytest.raises(ConfigError, match=r"refusing to listen on '0.0.0.0'.*hint"):
        check_exposure("0.0.0.0", ["0.0.0.0"], token=None, tls=False)


def test_token_file_strips_one_newline(tmp_path: Path) -> None:
    f = tmp_path / "t"
    for text, token in (("abc\n", "abc"), ("abc\r\n", "abc"), ("abc", "abc"),
                        ("abc\n\n", "abc\n")):
        f.write_text(text)
        assert read_token_file(f) == token
    f.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_token_file(f)
    with pytest.raises(ConfigError, match="cannot read token file"):
        read_token_file(tmp_path / "missing")


def test_token_sources_and_precedence(tmp_path: Path) -> None:
    f = tmp_path / "t"
    f.write_text("from-file\n")
    p = build_parser()
    env = {"MEMOH_TRIO_TOKEN": "from-env"}
    base = ["serve", "--root", "/x"]
    assert resolve_token(p.parse_args(base), env) == "from-env"
    assert resolve_token(p.parse_args(base), {"MEMOH_TRIO_TOKEN": ""}) is None
    assert resolve_token(p.parse_args([*base, "--token", "t"]), env) == "t"
    assert resolve_token(p.parse_args([*base, "--token-file", str(f)]), env) == "from-file"
    with pytest.raises(ConfigError, match="contradict"):
        resolve_token(p.parse_args([*base, "--token", "t", "--token-file", str(f)]), env)
    migrate = p.parse_args(["migrate", "/s", "--target", "h:1", "--token-file", str(f)])
    assert resolve_token(migrate, {}) == "from-file"


async def test_library_serve_refuses_without_a_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="without authentication"):
        await memoh_trio.serve(tmp_path)
    with pytest.raises(ConfigError, match="refusing to listen"):
        await memoh_trio.serve(tmp_path, "0.0.0.0", 0, allow_unauthenticated=True)


async def test_library_no_exec_and_unauthenticated_mode(tmp_path: Path) -> None:
    async with running_server(tmp_path, allow_exec=False) as server, server.connect() as c:
        with pytest.raises(_errors.Unimplemented, match="Exec is disabled"):
            await c.exec("touch ran")
        await c.write_file("ok.txt", b"files still work")
    assert not (tmp_path / "ran").exists() and (tmp_path / "ok.txt").exists()
    async with running_server(tmp_path, allow_unauthenticated=True) as server:
        assert server.token is None
        async with server.connect() as c:
            assert (await c.exec("echo hi")).stdout == b"hi\n"


# --------------------------------------------------------------------------- real processes


async def serve_cli(root: Path, *args: str, env_token: str | None = None
                    ) -> tuple[int, str, str]:
    """Run ``memoh-trio serve`` expecting it to refuse: (exit code, stdout, stderr)."""
    with trio.fail_after(30):
        done = await trio.run_process(memoh_trio_serve_cmd(root, *args), env=serve_env(env_token),
                                      capture_stdout=True, capture_stderr=True, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.mark.parametrize(("args", "env_token", "words"), [
    ((), None, "without authentication"),
    (("--listen", "0.0.0.0:0", "--no-auth"), None, "refusing to listen on '0.0.0.0'"),
    (("--no-auth",), TEST_TOKEN, "--no-auth contradicts"),
    (("--no-auth", "--token", "t"), None, "--no-auth contradicts"),
    (("--token", "two words"), None, "printable ASCII"),
    (("--token-file", "/nonexistent/token"), None, "cannot read token file"),
])
async def test_serve_refusals_exit_2_with_one_line_and_hint(
        tmp_path: Path, args: tuple[str, ...], env_token: str | None, words: str) -> None:
    code, out, err = await serve_cli(tmp_path, *args, env_token=env_token)
    assert code == EXIT_USAGE, (code, out, err)
    assert out == ""  # never "listening on"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memoh-trio: error: "), err
    assert words in lines[0], err
    if words in ("without authentication", "refusing to listen on '0.0.0.0'",
                 "--no-auth contradicts"):
        assert "hint:" in lines[0], err


async def test_token_file_keeps_the_secret_out_of_argv(tmp_path: Path) -> None:
    secret = "s3cret-from-a-file-not-argv"
    token_file = tmp_path / "token"
    token_file.write_text(secret + "\n")
    root = tmp_path / "root"
    root.mkdir()
    async with memoh_trio_server(root, "--token-file", str(token_file), token=None) as peer:
        cmdline = Path(f"/proc/{peer.process.pid}/cmdline").read_bytes()
        assert b"--token-file" in cmdline and secret.encode() not in cmdline
        environ = Path(f"/proc/{peer.process.pid}/environ").read_bytes()
        assert secret.encode() not in environ
        async with memoh_trio.connect(peer.target, token=secret) as client:
            assert (await client.exec("echo ok > by-token")).exit_code == 0
        for token in (None, "wrong"):
            async with memoh_trio.connect(peer.target, token=token) as client:
                with pytest.raises(_errors.Unauthenticated):
                    await client.exec("touch by-intruder")
                with pytest.raises(_errors.Unauthenticated):
                    await client.stat("by-token")
    assert (root / "by-token").read_text() == "ok\n"
    assert not (root / "by-intruder").exists()


async def test_client_commands_take_a_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TEST_TOKEN + "\n")
    src = tmp_path / "bot"
    src.mkdir()
    (src / "a.txt").write_bytes(b"hello\n")
    root = tmp_path / "root"
    root.mkdir()
    async with memoh_trio_server(root) as peer:
        with trio.fail_after(60):
            done = await trio.run_process(
                [sys.executable, "-m", "memoh_trio", "migrate", str(src), "--target",
                 peer.target, "--token-file", str(token_file), "--json"],
                env=serve_env(None), capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert (root / "a.txt").read_bytes() == b"hello\n"
    assert Path(str(src) + ".migrated").is_dir()


async def test_no_auth_serves_anyone_and_no_exec_refuses_exec(tmp_path: Path) -> None:
    async with memoh_trio_server(tmp_path, "--no-auth", token=None) as peer, \
            memoh_trio.connect(peer.target) as client:
        assert (await client.exec("echo open")).stdout == b"open\n"
    async with memoh_trio_server(tmp_path, "--no-exec") as peer, \
            memoh_trio.connect(peer.target, token=TEST_TOKEN) as client:
        with pytest.raises(_errors.Unimplemented, match="Exec is disabled"):
            await client.exec("touch ran")
        await client.write_file("w.txt", b"x")
    assert not (tmp_path / "ran").exists() and (tmp_path / "w.txt").read_bytes() == b"x"
