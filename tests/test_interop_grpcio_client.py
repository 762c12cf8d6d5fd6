"""Interop: grpcio (an independent gRPC implementation) drives the memoh-trio server.

The server runs in a background thread with its own ``trio.run``; the grpcio client is
synchronous and runs in the test (these tests are plain functions, not Trio tests).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio

from benchmarks.grpcio_peer import load_stubs
from memoh_trio import _fs
from memoh_trio._server import ServerAddress, serve

pb2, pb2_grpc = load_stubs()


class ServerThread:
    def __init__(self, root: Path, **kwargs: Any) -> None:
        self._root = root
        self._kwargs = kwargs
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self.address: ServerAddress | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    kwargs = {"allow_unauthenticated": self._kwargs.get("token") is None,
                              **self._kwargs}
                    self.address = await nursery.start(partial(serve, self._root, **kwargs))
                    self._ready.set()

        try:
            trio.run(main)
        except BaseException as exc:
            self.error = exc
            self._ready.set()

    def __enter__(self) -> ServerAddress:
        self._thread.start()
        assert self._ready.wait(10), "server did not start"
        assert self.address is not None, self.error
        return self.address

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None and self._scope is not None
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(10)
        assert not self._thread.is_alive()
        assert self.error is None, self.error


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest.fixture
def stub(root: Path) -> Iterator[Any]:
    with ServerThread(root) as addr, grpc.insecure_channel(str(addr)) as channel:
        yield pb2_grpc.ContainerServiceStub(channel)


def test_unary_rpcs(stub: Any, root: Path) -> None:
    stub.WriteFile(pb2.WriteFileRequest(path="/a/b.txt", content=b"l1\nl2\n"), timeout=5)
    r = stub.ReadFile(pb2.ReadFileRequest(path="a/b.txt"), timeout=5)
    assert (r.content, r.total_lines, r.binary) == ("     1\tl1\n     2\tl2\n", 2, False)
    e = stub.Stat(pb2.StatRequest(path="a"), timeout=5).entry
    assert (e.path, e.is_dir, e.mode) == ("a", True, "drwxr-xr-x")
    stub.Mkdir(pb2.MkdirRequest(path="m/n"), timeout=5)
    names = [x.path for x in stub.ListDir(pb2.ListDirRequest(recursive=True), timeout=5).entries]
    assert names == ["a", "a/b.txt", "m", "m/n"]
    stub.Rename(pb2.RenameRequest(old_path="a/b.txt", new_path="z/c.txt"), timeout=5)
    stub.DeleteFile(pb2.DeleteFileRequest(path="m", recursive=True), timeout=5)
    assert sorted(os.listdir(root)) == ["a", "z"]
    with pytest.raises(grpc.RpcError) as info:
        stub.Stat(pb2.StatRequest(path="nope"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        stub.Stat(pb2.StatRequest(path="../../etc/passwd"), timeout=5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_write_raw_read_raw_and_abort(stub: Any, root: Path) -> None:
    blob = os.urandom(5 * 1024 * 1024 + 3)

    def chunks() -> Iterator[Any]:
        yield pb2.WriteRawChunk(path="x/blob", data=blob[:10])
        for i in range(10, len(blob), 1 << 20):
            yield pb2.WriteRawChunk(data=blob[i:i + (1 << 20)])

    assert stub.WriteRaw(chunks(), timeout=30).bytes_written == len(blob)
    got = b"".join(c.data for c in stub.ReadRaw(pb2.ReadRawRequest(path="x/blob"), timeout=30))
    assert got == blob

    def aborted() -> Iterator[Any]:
        yield pb2.WriteRawChunk(path="x/blob", data=b"replacement")
        yield pb2.WriteRawChunk(abort=True)

    with pytest.raises(grpc.RpcError) as info:
        stub.WriteRaw(aborted(), timeout=5)
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert (root / "x/blob").read_bytes() == blob
    # No message at all: OK with 0 bytes, as Memoh's Go server (issue 10).
    assert stub.WriteRaw(iter([]), timeout=5).bytes_written == 0
    assert not [p for p in root.rglob("*") if p.name.startswith(_fs.TEMP_PREFIX)]


def test_message_over_limit(root: Path) -> None:
    with ServerThread(root, max_message_size=1 << 20) as addr, grpc.insecure_channel(
        str(addr), options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        stub = pb2_grpc.ContainerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.WriteRaw(iter([pb2.WriteRawChunk(path="big", data=b"x" * (2 << 20))]),
                          timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not (root / "big").exists()


def test_exec(stub: Any) -> None:
    def inputs() -> Iterator[Any]:
        yield pb2.ExecInput(command="cat; echo oops >&2; exit 7")
        yield pb2.ExecInput(stdin_data=b"a")
        yield pb2.ExecInput(stdin_data=b"b")

    out = list(stub.Exec(inputs(), timeout=10))
    stdout = b"".join(o.data for o in out if o.stream == pb2.ExecOutput.STDOUT)
    stderr = b"".join(o.data for o in out if o.stream == pb2.ExecOutput.STDERR)
    assert (stdout, stderr) == (b"ab", b"oops\n")
    assert out[-1].stream == pb2.ExecOutput.EXIT and out[-1].exit_code == 7


def test_token(root: Path) -> None:
    with ServerThread(root, token="t0k") as addr, grpc.insecure_channel(str(addr)) as channel:
        stub = pb2_grpc.ContainerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Mkdir(pb2.MkdirRequest(path="x"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stub.Mkdir(pb2.MkdirRequest(path="y"), timeout=5,
                   metadata=[("authorization", "Bearer t0k")])
    assert os.listdir(root) == ["y"]
