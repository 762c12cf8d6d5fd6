"""Interop: the memoh-trio client drives a grpcio server (an independent gRPC implementation).

The grpcio peer (benchmarks/grpcio_peer.py) has the semantics of Memoh's Go server: WriteRaw
writes in place as chunks arrive and honours ``abort``. (test_client.py runs every client case
against it too; this file covers what is specific to talking to grpcio.)
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from benchmarks.grpcio_peer import make_servicer, start_grpcio_server
from memoh_trio import _errors
from memoh_trio._bridge.client import STREAM_WINDOW
from memoh_trio._client import connect

MiB = 1024 * 1024


@pytest.fixture
def grpcio_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "root"
    root.mkdir()
    server, port = start_grpcio_server(root)
    yield f"127.0.0.1:{port}", root
    server.stop(None)


async def test_all_rpcs_against_grpcio(grpcio_server: tuple[str, Path], tmp_path: Path) -> None:
    target, root = grpcio_server
    data = os.urandom(3 * MiB + 1)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    async with connect(target) as c:
        await c.mkdir("d")
        await c.write_file("d/t.txt", b"a\nb\n")
        assert (await c.read_file("d/t.txt")).total_lines == 2
        res = await c.write_raw("d/raw.bin", src, hash_sha256=True, expected_size=len(data))
        assert res.sha256 == hashlib.sha256(data).hexdigest()
        async with c.read_raw("d/raw.bin") as chunks:
            assert b"".join([x async for x in chunks]) == data
        assert {e.path for e in await c.list_dir("d")} == {"t.txt", "raw.bin"}
        await c.rename("d/raw.bin", "e/raw.bin")
        assert (await c.stat("e/raw.bin")).size == len(data)
        assert (await c.exec("echo hi")).stdout == b"hi\n"
        await c.delete_file("e", recursive=True)
        with pytest.raises(_errors.NotFound):
            await c.stat("e/raw.bin")
    assert not (root / "e").exists()


async def test_chunks_up_to_limit_accepted(grpcio_server: tuple[str, Path]) -> None:
    """Chunks just under 4 MiB (the default grpcio/grpc-go limit) are accepted."""
    target, root = grpcio_server
    data = os.urandom(9 * MiB)
    async with connect(target, chunk_size=4 * MiB - 1024) as c:
        await c.write_raw("big.bin", data)
    assert (root / "big.bin").read_bytes() == data


async def test_grpcio_message_limit_is_resource_exhausted(tmp_path: Path) -> None:
    server, port = start_grpcio_server(tmp_path, max_message_size=MiB)
    try:
        async with connect(f"127.0.0.1:{port}") as c:
            with pytest.raises(_errors.ResourceExhausted):
                await c.write_raw("x.bin", os.urandom(3 * MiB), chunk_size=2 * MiB)
    finally:
        server.stop(None)


class GatedServicer:
    """Wraps the peer's servicer: WriteRaw stops reading after ``gate_after`` bytes until
    ``release`` is set, so the client must stop sending (HTTP/2 flow control)."""

    def __init__(self, root: Path, gate_after: int) -> None:
        self.inner: Any = make_servicer(root)
        self.gate_after = gate_after
        self.received = 0
        self.gated = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def WriteRaw(self, request_iterator: Any, context: Any) -> Any:
        def gated() -> Iterator[Any]:
            for chunk in request_iterator:
                self.received += len(chunk.data)
                yield chunk
                if self.received >= self.gate_after and not self.release.is_set():
                    self.gated.set()
                    self.release.wait(30)

        return self.inner.WriteRaw(gated(), context)


async def test_backpressure_bounds_read_ahead(tmp_path: Path) -> None:
    """A large generated source is never read far ahead of what the server consumed.

    The grpcio server stops reading after 4 MiB; the client must then stop pulling from the
    source once the server's HTTP/2 windows are full. The bound is the server's receive window
    (grpcio grows it by BDP probing, at most 8 MiB... measured below 16 MiB) plus a few chunks; the
    source is 256 MiB, so without backpressure it would be read far beyond that.
    """
    chunk = 256 * 1024
    total = 256 * MiB
    gate = GatedServicer(tmp_path, 4 * MiB)
    server, port = start_grpcio_server(tmp_path, servicer=gate)
    produced = 0
    high_water = 0

    async def source() -> AsyncIterator[bytes]:
        nonlocal produced, high_water
        block = b"\x5a" * chunk
        while produced < total:
            produced += chunk
            high_water = max(high_water, produced - gate.received)
            yield block

    try:
        async with connect(f"127.0.0.1:{port}") as c, trio.open_nursery() as nursery:
            done = trio.Event()

            async def write() -> None:
                res = await c.write_raw("bp.bin", source(), chunk_size=chunk)
                assert res.bytes_written == total
                done.set()

            nursery.start_soon(write)
            await trio.to_thread.run_sync(gate.gated.wait, 30)
            # Give the sender every chance to run ahead while the server reads nothing.
            for _ in range(20):
                await trio.sleep(0.02)
            ahead = produced - gate.received
            assert ahead <= 32 * MiB, f"source read {ahead} bytes ahead of the server"
            assert produced < total
            gate.release.set()
            with trio.fail_after(60):
                await done.wait()
    finally:
        gate.release.set()
        server.stop(None)
    assert (tmp_path / "bp.bin").stat().st_size == total
    print(f"max read-ahead while gated: {ahead / MiB:.1f} MiB; overall {high_water / MiB:.1f} MiB")


def test_client_window_constant() -> None:
    assert STREAM_WINDOW >= 64 * 1024
