"""Interop: the memoh-trio client against Memoh's real ContainerService (grpc-go, ``cmd/mcp``); the
Exec cases also against memoh-trio's own server (a child process), which must behave the same.

What Memoh's server does that ours does not (see ../shared/memoh-go/README.md): Exec reads only
``command``/``work_dir``/``env``/``timeout_seconds`` from the first message and drops its stdin;
grpc-go refuses any received message over 4 MiB; when a handler returns before the client
half-closed (a command that exits without reading all of its stdin, a WriteRaw that fails early)
grpc-go sends the whole response, then RST_STREAM(NO_ERROR). Each test here failed on main
(7e62c57 + the peers commit) and passes with the client speaking Exec as Memoh does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from peers import TEST_TOKEN, memoh_go_server, memoh_trio_server

import memoh_trio
from memoh_trio import _errors

pytestmark = pytest.mark.memoh_go

MiB = 1024 * 1024
SERVERS = ["memoh-go", "memoh-trio"]


@contextlib.asynccontextmanager
async def exec_client(kind: str, root: Path) -> AsyncIterator[memoh_trio.Client]:
    """A client of Memoh's server or of ours (a child process): Exec must behave the same."""
    if kind == "memoh-go":
        async with memoh_go_server(root) as peer, memoh_trio.connect(peer.target) as c:
            yield c
    else:
        async with memoh_trio_server(root) as peer, \
                memoh_trio.connect(peer.target, token=TEST_TOKEN) as c:
            yield c


async def test_all_ten_rpcs(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 5)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    root = tmp_path / "root"
    root.mkdir()
    async with memoh_go_server(root) as peer, memoh_trio.connect(peer.target) as c:
        await c.mkdir("d")
        await c.write_file("d/t.txt", b"a\nb\n")
        text = await c.read_file("d/t.txt")
        assert text.total_lines == 2 and not text.binary
        res = await c.write_raw("d/raw.bin", src, hash_sha256=True, expected_size=len(data))
        assert res.bytes_written == len(data)
        assert res.sha256 == hashlib.sha256(data).hexdigest()
        async with c.read_raw("d/raw.bin") as chunks:
            assert b"".join([x async for x in chunks]) == data
        assert {e.path for e in await c.list_dir("d")} == {"t.txt", "raw.bin"}
        await c.rename("d/raw.bin", "e/raw.bin")
        assert (await c.stat("e/raw.bin")).size == len(data)
        got = await c.exec("cat; echo done", stdin=b"in\n")
        assert (got.exit_code, got.stdout) == (0, b"in\ndone\n")
        await c.delete_file("e", recursive=True)
        with pytest.raises(_errors.NotFound):
            await c.stat("e/raw.bin")
    assert not (root / "e").exists()
    assert (root / "d" / "t.txt").read_bytes() == b"a\nb\n"


@pytest.mark.parametrize("kind", SERVERS)
@pytest.mark.parametrize("size", [1, 6, MiB, 5 * MiB], ids=["1B", "small", "1MiB", "5MiB"])
async def test_exec_stdin_bytes_round_trip(kind: str, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    async with exec_client(kind, tmp_path) as c:
        got = await c.exec("cat", stdin=data)
    assert got.exit_code == 0 and got.stderr == b""
    assert got.stdout == data


@pytest.mark.parametrize("kind", SERVERS)
async def test_exec_stdin_async_iterable(kind: str, tmp_path: Path) -> None:
    # Pieces of every shape: tiny, exactly 1 MiB, one over the 4 MiB message limit.
    pieces = [b"x", os.urandom(MiB), b"", os.urandom(4 * MiB + 3), b"tail\n"]

    async def source() -> AsyncIterator[bytes]:
        for piece in pieces:
            await trio.lowlevel.checkpoint()
            yield piece

    async with exec_client(kind, tmp_path) as c:
        got = await c.exec("cat", stdin=source())
    assert got.exit_code == 0
    assert got.stdout == b"".join(pieces)


@pytest.mark.parametrize("kind", SERVERS)
async def test_exec_without_stdin(kind: str, tmp_path: Path) -> None:
    async with exec_client(kind, tmp_path) as c:
        for _ in range(3):
            try:
                got = await c.exec("printf out; printf err >&2; exit 0")
                break
            except _errors.Internal as exc:
                # Memoh's server sends stdout and stderr from two goroutines at once, which
                # grpc-go does not allow: now and then the call ends with this INTERNAL
                # (tests/test_exec_status.py). Only that error is tried again.
                if kind != "memoh-go" or "WriteHeader was already called" not in str(exc):
                    raise
    assert (got.exit_code, got.stdout, got.stderr) == (0, b"out", b"err")


@pytest.mark.parametrize("kind", SERVERS)
async def test_command_exits_before_reading_stdin(kind: str, tmp_path: Path) -> None:
    """grpc-go answers in full, then RST_STREAM(NO_ERROR): a result, not a lost connection."""
    async with exec_client(kind, tmp_path) as c:
        got = await c.exec("true", stdin=os.urandom(3 * MiB))
        assert (got.exit_code, got.stdout) == (0, b"")
        got = await c.exec("head -c 10", stdin=b"0123456789" * (400 * 1024))
        assert (got.exit_code, got.stdout) == (0, b"0123456789")
        got = await c.exec("exit 3", stdin=os.urandom(3 * MiB))
        assert got.exit_code == 3
        # The connection is still good afterwards.
        assert (await c.exec("echo ok")).stdout == b"ok\n"


async def test_exec_command_too_long_for_one_message(tmp_path: Path) -> None:
    async with memoh_go_server(tmp_path) as peer, memoh_trio.connect(peer.target) as c:
        with pytest.raises(_errors.InvalidArgument, match="send it as stdin"):
            await c.exec("true " + "x" * (4 * MiB))
        # The connection is still good (nothing was sent).
        assert (await c.exec("echo ok")).stdout == b"ok\n"


@pytest.mark.parametrize("kind", SERVERS)
async def test_exec_failing_command(kind: str, tmp_path: Path) -> None:
    async with exec_client(kind, tmp_path) as c:
        got = await c.exec("cat >&2; ls does-not-exist; exit 7", stdin=b"why\n")
    assert (got.exit_code, got.stdout) == (7, b"")
    assert got.stderr.startswith(b"why\n") and b"does-not-exist" in got.stderr


@pytest.mark.parametrize("kind", SERVERS)
async def test_exec_stdin_source_fails(kind: str, tmp_path: Path) -> None:
    """A failing async-iterable stdin cancels the call (the command would wait for more)."""

    async def source() -> AsyncIterator[bytes]:
        yield b"some"
        raise OSError("disk gone")

    async with exec_client(kind, tmp_path) as c:
        with trio.fail_after(10), pytest.raises(_errors.SourceReadError, match="disk gone"):
            await c.exec("cat", stdin=source())
        assert (await c.exec("echo ok")).stdout == b"ok\n"


@pytest.mark.parametrize("size", [0, 1, 10 * MiB], ids=["empty", "1B", "10MiB"])
async def test_write_raw_sizes(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    root = tmp_path / "root"
    root.mkdir()
    async with memoh_go_server(root) as peer, memoh_trio.connect(peer.target) as c:
        res = await c.write_raw("sub/f.bin", data, chunk_size=MiB, expected_size=size)
    assert res.bytes_written == size
    assert (root / "sub" / "f.bin").read_bytes() == data


@pytest.mark.parametrize("size", [0, 3])
async def test_write_raw_source_shorter_than_expected(tmp_path: Path, size: int) -> None:
    """An empty (or short) source where 5 bytes were expected is SourceChanged, also when it
    is empty from the start; nothing is created then."""
    root = tmp_path / "root"
    root.mkdir()
    async with memoh_go_server(root) as peer, memoh_trio.connect(peer.target) as c:
        with pytest.raises(_errors.SourceChanged):
            await c.write_raw("f.bin", b"x" * size, expected_size=5)
    if size == 0:
        assert not (root / "f.bin").exists()


async def test_write_raw_refused_early_surfaces_the_status(tmp_path: Path) -> None:
    """A WriteRaw the server fails at its first chunk (its parent is a file): grpc-go answers
    with the status, then resets the stream with NO_ERROR while we still send."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "file").write_bytes(b"x")
    async with memoh_go_server(root) as peer, memoh_trio.connect(peer.target) as c:
        with pytest.raises(_errors.RPCError) as info:
            await c.write_raw("file/sub/f.bin", os.urandom(20 * MiB))
        assert not isinstance(info.value, _errors.Unavailable), info.value
        assert info.value.status == _errors.Status.INTERNAL
        assert "mkdir" in str(info.value)
        assert (await c.exec("echo ok")).stdout == b"ok\n"


async def test_read_raw(tmp_path: Path) -> None:
    data = os.urandom(2 * MiB + 17)
    (tmp_path / "r.bin").write_bytes(data)
    async with memoh_go_server(tmp_path) as peer, memoh_trio.connect(peer.target) as c:
        async with c.read_raw("r.bin") as chunks:
            assert b"".join([x async for x in chunks]) == data
        with pytest.raises(_errors.NotFound):
            async with c.read_raw("missing.bin") as chunks:
                async for _ in chunks:
                    pass


async def test_list_dir_recursive(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f.txt").write_bytes(b"12345")
    (tmp_path / "top.txt").write_bytes(b"")
    async with memoh_go_server(tmp_path) as peer, memoh_trio.connect(peer.target) as c:
        entries = {e.path: e for e in await c.list_dir("", recursive=True)}
    assert {"a", "a/b", "a/b/f.txt", "top.txt"} <= set(entries)
    assert entries["a/b"].is_dir and not entries["a/b/f.txt"].is_dir
    assert entries["a/b/f.txt"].size == 5
