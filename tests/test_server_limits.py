"""The server under exhaustion, end to end: out of descriptors (a flood of idle connections) and
out of memory (large messages from many calls at once). The server runs as a child process
(``memoh-trio serve``) with its limits set by util-linux ``prlimit``; the clients are real.

Issue 23, items 5 and 6.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from peers import (
    MEMOH_GO_SERVER,
    TEST_TOKEN,
    Peer,
    memoh_trio_serve_cmd,
    memoh_trio_server,
    need_memoh_go,
    peer_process,
    serve_env,
)

import memoh_trio

# --------------------------------------------------------------------------- memory

MiB = 1024 * 1024
#: The largest WriteFile content under the server's 16 MiB message limit (path and tags aside).
BIG = 16 * MiB - 4096
#: The issue's target for 32 concurrent 16 MiB WriteFile calls (VmHWM of the server).
PEAK_LIMIT = 256 * MiB


def _vm(pid: int, key: str) -> int:
    """A ``Vm*`` figure of ``/proc/PID/status`` in bytes (VmHWM: peak resident set)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


async def test_read_file_of_a_huge_line_reads_no_more_than_it_returns(tmp_path: Path) -> None:
    """ReadFile of a 256 MiB file without a newline: the answer is the first 1,000 characters
    and the server never holds the line (512 MiB took it to 1.18 GB)."""
    with (tmp_path / "line.txt").open("wb") as f:
        block = b"r" * MiB
        for _ in range(256):
            f.write(block)
    async with memoh_trio_server(tmp_path) as peer:
        async with memoh_trio.connect(peer.target, token=TEST_TOKEN) as client:
            with trio.fail_after(120):
                got = await client.read_file("line.txt")
        peak = _vm(peer.process.pid, "VmHWM")
    print(f"ReadFile of a 256 MiB line: peak {peak / MiB:.0f} MiB")
    assert got.content == "     1\t" + "r" * 1000 + "...\n"
    assert got.total_lines == 1
    assert peak <= 128 * MiB


# --------------------------------------------------------------------------- descriptors

#: The descriptor limit of the flooded servers, and the idle connections opened against it.
NOFILE = 256
FLOOD = 300


def _limited(cmd: list[str], nofile: int) -> list[str]:
    if shutil.which("prlimit") is None:
        pytest.skip("util-linux prlimit not installed")
    return ["prlimit", f"--nofile={nofile}:{nofile}", "--", *cmd]


@contextlib.asynccontextmanager
async def _trio_server(root: Path, nofile: int) -> AsyncIterator[Peer]:
    async with peer_process(_limited(memoh_trio_serve_cmd(root), nofile), root,
                            env=serve_env()) as peer:
        yield peer


async def _flood(target: str, count: int) -> list[trio.SocketStream]:
    """``count`` idle TCP connections (nothing sent: no token needed to hold one)."""
    host, _, port = target.rpartition(":")
    streams: list[trio.SocketStream] = []
    with trio.fail_after(60):
        for _ in range(count):
            streams.append(await trio.open_tcp_stream(host, int(port)))
    return streams


async def _closed_by_server(stream: trio.SocketStream, limit: float = 10.0) -> bool:
    """Whether the server closed this connection (its SETTINGS, then end of stream)."""
    with trio.move_on_after(limit):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        return True
    return False


async def _round_trip(target: str, name: str) -> None:
    data = os.urandom(300_000)
    with trio.fail_after(30):
        async with memoh_trio.connect(target, token=TEST_TOKEN) as client:
            assert (await client.write_raw(name, data)).bytes_written == len(data)
            async with client.read_raw(name) as chunks:
                back = b"".join([c async for c in chunks])
    assert back == data


async def _close_all(streams: list[trio.SocketStream]) -> None:
    for stream in streams:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.aclose()


@pytest.mark.parametrize(("nofile", "count"), [(NOFILE, FLOOD), (1024, 1100)])
async def test_idle_connection_flood_past_the_descriptor_limit(
        tmp_path: Path, nofile: int, count: int) -> None:
    """300 idle connections to a server limited to 256 descriptors (1,100 to the common 1,024):
    it keeps running, closes the oldest idle (unauthenticated) connections for room, and serves
    a client with the token while the flood is still connected and after it left."""
    async with _trio_server(tmp_path, nofile) as peer:
        flood = await _flood(peer.target, count)
        try:
            await trio.sleep(0.5)
            assert peer.process.returncode is None, "the server died under the flood"
            await _round_trip(peer.target, "during.bin")
            # The oldest idle connection was closed to make room; a newer one too (the cap
            # is below the limit), while the client's connection was served.
            assert await _closed_by_server(flood[0])
            assert peer.process.returncode is None
        finally:
            await _close_all(flood)
        await _round_trip(peer.target, "after.bin")
        assert peer.process.returncode is None
    assert (tmp_path / "during.bin").stat().st_size == 300_000


async def test_trusted_connection_is_kept_through_a_flood(tmp_path: Path) -> None:
    """A client that made a call before the flood keeps its connection: only connections that
    never got past the token check are closed for room. Its upload, begun before the flood
    and ended after it, completes on the same connection."""
    flooded = trio.Event()

    async def source() -> AsyncIterator[bytes]:
        yield b"a" * 100_000
        await flooded.wait()
        yield b"b" * 100_000

    async with _trio_server(tmp_path, NOFILE) as peer:
        async with memoh_trio.connect(peer.target, token=TEST_TOKEN) as client:
            await client.write_file("before.txt", b"x")
            async with trio.open_nursery() as nursery:
                async def upload() -> None:
                    with trio.fail_after(60):
                        await client.write_raw("held.bin", source())

                nursery.start_soon(upload)
                flood = await _flood(peer.target, FLOOD)
                try:
                    await trio.sleep(0.5)
                    assert peer.process.returncode is None
                    flooded.set()
                finally:
                    await _close_all(flood)
        assert peer.process.returncode is None
    assert (tmp_path / "held.bin").read_bytes() == b"a" * 100_000 + b"b" * 100_000


@pytest.mark.memoh_go
async def test_memoh_go_server_survives_the_same_flood(tmp_path: Path) -> None:
    """The comparison the issue makes: Memoh's Go server, same limit and flood, keeps running
    (it pauses accepting and closes nothing: a client is served once the flood left)."""
    need_memoh_go()
    cmd = _limited([str(MEMOH_GO_SERVER), "--root", str(tmp_path), "--listen", "127.0.0.1:0"],
                   NOFILE)
    async with peer_process(cmd, tmp_path) as peer:
        flood = await _flood(peer.target, FLOOD)
        try:
            await trio.sleep(0.5)
            assert peer.process.returncode is None
        finally:
            await _close_all(flood)
        with trio.fail_after(30):
            async with memoh_trio.connect(peer.target) as client:
                await client.write_file("after.txt", b"z")
        assert peer.process.returncode is None
