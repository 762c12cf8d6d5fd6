"""The Trio client (memoh_trio._client) end to end, against real servers on 127.0.0.1.

Every case runs against two servers: the grpcio peer (an independent gRPC implementation with the
Go server's semantics, benchmarks/grpcio_peer.py) and memoh-trio's own server.
"""

from __future__ import annotations

import errno
import functools
import gc
import hashlib
import io
import os
import socket
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest
import trio
from _certs import Certs, make_certs  # tests/ is on sys.path (pytest rootdir-less import)

from benchmarks.grpcio_peer import start_grpcio_server
from memoh_trio import _errors
from memoh_trio._client import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    Client,
    ExecResult,
    FileEntry,
    connect,
    parse_target,
)
from memoh_trio._tls import ClientTLS, ServerTLS

KiB = 1024
MiB = 1024 * KiB


@dataclass
class Server:
    kind: str  # "grpcio" or "trio"
    target: str
    root: Path
    stop: Callable[[], None]


MakeServer = Callable[..., Awaitable[Server]]


@pytest.fixture(params=["grpcio", "trio"])
async def make_server(
    request: pytest.FixtureRequest, tmp_path: Path, nursery: trio.Nursery
) -> AsyncIterator[MakeServer]:
    """Factory: ``await make_server(token=..., tls=...)`` starts a server over a fresh root."""
    kind: str = request.param
    stops: list[Callable[[], None]] = []
    count = 0

    async def make(
        *, token: str | None = None, tls: ServerTLS | None = None, **kwargs: Any
    ) -> Server:
        nonlocal count
        count += 1
        root = tmp_path / f"root{count}"
        root.mkdir()
        if kind == "grpcio":
            assert not kwargs, f"the grpcio peer has no {', '.join(kwargs)}"
            tls_pems = None
            if tls is not None:
                tls_pems = (
                    tls.cert.read_bytes(), tls.key.read_bytes(),
                    tls.client_ca.read_bytes() if tls.client_ca else None,
                )
            server, port = start_grpcio_server(root, token=token, tls=tls_pems)
            stops.append(lambda: server.stop(None))
            return Server(kind, f"127.0.0.1:{port}", root, stops[-1])
        from memoh_trio._server import serve

        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[Any]) -> None:
            with scope:
                await serve(root, token=token, allow_unauthenticated=token is None, tls=tls,
                            task_status=task_status, **kwargs)

        addr = await nursery.start(run)
        stops.append(scope.cancel)
        return Server(kind, str(addr), root, scope.cancel)

    yield make
    for stop in stops:
        stop()


@pytest.fixture
async def server(make_server: MakeServer) -> Server:
    return await make_server()


@pytest.fixture
async def client(server: Server) -> AsyncIterator[Client]:
    async with connect(server.target) as c:
        yield c


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        await trio.lowlevel.checkpoint()
        yield data[i : i + size]


# --------------------------------------------------------------------------- unary RPCs


async def test_unary_round_trips(client: Client, server: Server) -> None:
    await client.write_file("docs/a.txt", b"one\ntwo\nthree\n")
    assert (server.root / "docs/a.txt").read_bytes() == b"one\ntwo\nthree\n"

    res = await client.read_file("docs/a.txt")
    assert (res.content, res.total_lines, res.binary) == (
        "     1\tone\n     2\ttwo\n     3\tthree\n", 3, False
    )
    res = await client.read_file("/docs/a.txt", line_offset=2, n_lines=1)
    assert res.content == "     2\ttwo\n"

    entry = await client.stat("docs/a.txt")
    assert isinstance(entry, FileEntry)
    assert (entry.path, entry.is_dir, entry.size, entry.mode) == ("a.txt", False, 14, "-rw-r--r--")
    assert entry.mod_time.endswith("Z") or "+" in entry.mod_time

    await client.mkdir("deep/er/dir")
    assert (server.root / "deep/er/dir").is_dir()
    d = await client.stat("deep/er")
    assert d.is_dir and d.mode.startswith("d")

    await client.rename("docs/a.txt", "moved/b.txt")
    assert (server.root / "moved/b.txt").read_bytes() == b"one\ntwo\nthree\n"
    assert not (server.root / "docs/a.txt").exists()

    names = [e.path for e in await client.list_dir("")]
    assert names == ["deep", "docs", "moved"]
    rec = {e.path: e.is_dir for e in await client.list_dir("/", recursive=True)}
    assert rec["moved/b.txt"] is False and rec["deep/er/dir"] is True

    await client.delete_file("moved/b.txt")
    assert not (server.root / "moved/b.txt").exists()
    await client.delete_file("moved/b.txt")  # deleting a missing path succeeds
    await client.delete_file("deep", recursive=True)
    assert not (server.root / "deep").exists()


async def test_read_file_binary(client: Client, server: Server) -> None:
    (server.root / "bin").write_bytes(b"\x00\x01\x02 binary")
    res = await client.read_file("bin")
    assert res.binary and res.content == ""


async def test_errors_map_to_classes(client: Client, server: Server) -> None:
    with pytest.raises(_errors.NotFound) as info:
        await client.stat("missing.txt")
    assert info.value.status is _errors.Status.NOT_FOUND
    assert info.value.method == "Stat"
    assert info.value.message  # the server's status message is carried
    with pytest.raises(_errors.NotFound):
        await client.read_file("missing.txt")
    with pytest.raises(_errors.NotFound):
        await client.list_dir("missing-dir")
    with pytest.raises((_errors.PermissionDenied, _errors.InvalidArgument)):
        await client.write_file("../escape.txt", b"x")
    assert not (server.root.parent / "escape.txt").exists()
    (server.root / "full").mkdir()
    (server.root / "full/f").write_bytes(b"x")
    with pytest.raises(_errors.RPCError):
        await client.delete_file("full")  # not empty, not recursive
    assert (server.root / "full/f").exists()
    # The connection is still usable after errors.
    assert (await client.stat("full")).is_dir


# --------------------------------------------------------------------------- WriteRaw


async def test_write_raw_from_bytes(client: Client, server: Server) -> None:
    data = os.urandom(3 * MiB + 123)
    seen: list[int] = []
    res = await client.write_raw(
        "up/bytes.bin", data, chunk_size=256 * KiB, hash_sha256=True, on_progress=seen.append
    )
    assert (server.root / "up/bytes.bin").read_bytes() == data
    assert res.bytes_written == res.bytes_read == len(data)
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data) and max(seen) <= 256 * KiB and len(seen) == 13


async def test_write_raw_from_path_and_file(
    client: Client, server: Server, tmp_path: Path
) -> None:
    data = os.urandom(2 * MiB + 7)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    res = await client.write_raw("p/str.bin", str(src), expected_size=len(data))
    assert res.bytes_written == len(data)
    await client.write_raw("p/pathlike.bin", src, chunk_size=64 * KiB)
    with src.open("rb") as f:
        await client.write_raw("p/file.bin", f, hash_sha256=True)
    await client.write_raw("p/bytesio.bin", io.BytesIO(data))
    for name in ("str", "pathlike", "file", "bytesio"):
        assert (server.root / f"p/{name}.bin").read_bytes() == data


async def test_write_raw_from_path_cached_and_not_cached(
    client: Client, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path source is read on the event loop while the page cache holds it and in a worker
    thread when it does not (RWF_NOWAIT says EAGAIN): same bytes either way."""
    from memoh_trio._bridge import reader, threads

    if reader.NOWAIT is None:
        pytest.skip("no RWF_NOWAIT on this platform")
    data = os.urandom(6 * MiB + 5)
    src = tmp_path / "src.bin"
    with src.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    thread_reads: list[str] = []
    real_run = threads.run

    def recording_run(fn: Any, *args: Any) -> Any:
        thread_reads.append(getattr(fn, "__name__", ""))
        return real_run(fn, *args)

    monkeypatch.setattr(threads, "run", recording_run)

    fd = os.open(src, os.O_RDONLY)
    try:

        def evict(nbytes: int = 0) -> None:  # clean pages: dropped from the page cache
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

        probe = bytearray(4096)
        for _ in range(10):  # a writeback still running can keep the page for a moment
            evict()
            try:
                cached = os.preadv(fd, [probe], 3 * MiB, reader.NOWAIT) > 0
            except BlockingIOError:
                cached = False
            if not cached:
                break
            await trio.sleep(0.05)
        if cached:
            pytest.skip("this filesystem keeps the file cached (tmpfs?)")
        # Evicted again after every chunk sent (on_progress runs before the next read), so the
        # kernel's read-ahead cannot make the rest of the file cached behind our back.
        res = await client.write_raw("cold.bin", src, chunk_size=MiB, expected_size=len(data),
                                     on_progress=evict)
    finally:
        os.close(fd)
    cold = thread_reads.count("_read_in_thread")
    thread_reads.clear()
    src.read_bytes()  # now in the page cache
    await client.write_raw("warm.bin", src, chunk_size=MiB, expected_size=len(data))
    warm = thread_reads.count("_read_in_thread")
    assert res.bytes_written == len(data)
    assert (server.root / "cold.bin").read_bytes() == data
    assert (server.root / "warm.bin").read_bytes() == data
    assert warm == 1  # only the first read, which opens the file
    assert cold > 1  # at least one chunk fell back to the worker thread


async def test_stream_buffers_go_from_one_file_to_the_next(
    client: Client, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunk buffers of a stream that ended are the next stream's (no fresh 1 MiB buffer
    per file), and the next file's bytes are its own: a shorter file after a longer one, with
    the buffers still holding the first one's bytes."""
    from memoh_trio._bridge import reader

    chunk = 96 * KiB + 3  # a size no other test uses: its buffers are these streams' alone
    taken: list[bytearray] = []
    real_take = reader.POOL.take

    def recording_take(size: int) -> bytearray:
        buf = real_take(size)
        taken.append(buf)
        return buf

    monkeypatch.setattr(reader.POOL, "take", recording_take)
    first, second = os.urandom(3 * chunk + 11), os.urandom(chunk + 5)
    (tmp_path / "first").write_bytes(first)
    (tmp_path / "second").write_bytes(second)
    await client.write_raw("pool/first", tmp_path / "first", chunk_size=chunk)
    assert reader.POOL.kept(chunk) == 2
    await client.write_raw("pool/second", tmp_path / "second", chunk_size=chunk)
    assert len(taken) == 4 and {id(b) for b in taken[2:]} == {id(b) for b in taken[:2]}
    assert (server.root / "pool/first").read_bytes() == first
    assert (server.root / "pool/second").read_bytes() == second


def test_a_buffer_a_thread_still_reads_into_is_not_reused() -> None:
    """A read cancelled while its worker thread is still in the source's ``read``: the reader's
    buffers are not handed to another stream (the thread writes into one when the read
    returns)."""
    import asyncio
    import threading

    from memoh_trio._bridge import reader

    chunk = 80 * KiB + 1
    entered, release = threading.Event(), threading.Event()

    class Slow(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            entered.set()
            release.wait(10)
            return b"x" * chunk

    async def main() -> None:
        r = reader.Reader(reader.SourceSpec(file=cast(BinaryIO, Slow())), chunk, None)
        task = asyncio.ensure_future(r.next())
        assert await asyncio.to_thread(entered.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await r.aclose()  # nothing ahead: the cancelled read's thread is still in read()
        assert reader.POOL.kept(chunk) == 0
        release.set()

    asyncio.run(main())
    assert reader.POOL.kept(chunk) == 0


async def test_write_raw_from_async_iterable(client: Client, server: Server) -> None:
    data = os.urandom(MiB + 5)
    res = await client.write_raw("it/a.bin", chunks_of(data, 100 * KiB), hash_sha256=True)
    assert (server.root / "it/a.bin").read_bytes() == data
    assert res.sha256 == hashlib.sha256(data).hexdigest()


async def test_write_raw_empty_source_creates_empty_file(client: Client, server: Server) -> None:
    res = await client.write_raw("empty/e.bin", b"")
    assert res.bytes_written == 0
    assert (server.root / "empty/e.bin").read_bytes() == b""

    async def nothing() -> AsyncIterator[bytes]:
        return
        yield b""  # pragma: no cover

    await client.write_raw("empty/e2.bin", nothing())
    assert (server.root / "empty/e2.bin").read_bytes() == b""


async def test_write_raw_replaces_existing_file(client: Client, server: Server) -> None:
    (server.root / "r.bin").write_bytes(b"old content that is longer")
    await client.write_raw("r.bin", b"new")
    assert (server.root / "r.bin").read_bytes() == b"new"


async def test_write_raw_failing_async_iterable_aborts(client: Client, server: Server) -> None:
    async def failing() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield os.urandom(300 * KiB)
        raise OSError(errno.EIO, "disk fell off")

    with pytest.raises(_errors.SourceReadError, match="disk fell off") as info:
        await client.write_raw("ab/x.bin", failing(), chunk_size=128 * KiB)
    assert isinstance(info.value.__cause__, OSError)
    # abort=true made the server discard everything.
    assert not (server.root / "ab/x.bin").exists()
    with pytest.raises(_errors.NotFound):
        await client.stat("ab/x.bin")
    if (server.root / "ab").exists():  # no temporary file left behind either
        assert list((server.root / "ab").iterdir()) == []


async def test_write_raw_source_failing_at_once_sends_nothing(
    client: Client, server: Server
) -> None:
    async def failing() -> AsyncIterator[bytes]:
        raise ValueError("no data for you")
        yield b""  # pragma: no cover

    with pytest.raises(_errors.SourceReadError, match="no data for you"):
        await client.write_raw("nothing/x.bin", failing())
    assert not (server.root / "nothing").exists()


class FlakyFile(io.RawIOBase):
    """A file whose ``read`` fails after ``ok`` successful reads."""

    def __init__(self, ok: int, size: int) -> None:
        self.ok, self.size = ok, size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.ok == 0:
            raise OSError(errno.EIO, "read error")
        self.ok -= 1
        return os.urandom(min(n, self.size))


async def test_write_raw_failing_file_aborts(client: Client, server: Server) -> None:
    with pytest.raises(_errors.SourceReadError, match="read error"):
        await client.write_raw(
            "ff/x.bin", cast(BinaryIO, FlakyFile(3, 64 * KiB)), chunk_size=64 * KiB
        )
    assert not (server.root / "ff/x.bin").exists()


async def test_write_raw_missing_host_file(client: Client, server: Server, tmp_path: Path) -> None:
    with pytest.raises(_errors.SourceReadError, match="No such file"):
        await client.write_raw("m/x.bin", tmp_path / "does-not-exist")
    assert not (server.root / "m").exists()


@pytest.mark.parametrize("actual", [100 * KiB, 300 * KiB])
async def test_write_raw_expected_size_mismatch(
    client: Client, server: Server, actual: int
) -> None:
    with pytest.raises(_errors.SourceChanged, match="expected 200000 bytes"):
        await client.write_raw(
            "sz/x.bin", chunks_of(os.urandom(actual), 32 * KiB), expected_size=200_000,
            chunk_size=32 * KiB,
        )
    assert not (server.root / "sz/x.bin").exists()
    ok = await client.write_raw("sz/y.bin", os.urandom(1000), expected_size=1000)
    assert ok.bytes_written == 1000


async def test_write_raw_stalled_source(client: Client, server: Server) -> None:
    async def slow() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        await trio.sleep_forever()
        yield b""  # pragma: no cover

    with trio.fail_after(10):
        with pytest.raises(_errors.Stalled, match="no progress"):
            await client.write_raw("st/x.bin", slow(), stall_timeout=0.3)
    # The client is still usable afterwards.
    assert (await client.list_dir("")) is not None


async def test_write_raw_stalled_server(tmp_path: Path, nursery: trio.Nursery) -> None:
    """A server that stops reading: HTTP/2 flow control blocks the sender, the watchdog fires.

    Only memoh-trio's server has the stall hook, so this test is not parametrized over grpcio.
    """
    from memoh_trio._fs import ServerHooks
    from memoh_trio._server import serve

    root = tmp_path / "root"
    root.mkdir()
    addr = await nursery.start(
        functools.partial(serve, root, hooks=ServerHooks(stall_after_bytes=MiB), window_size=MiB,
                          allow_unauthenticated=True)
    )
    async with connect(str(addr)) as c:
        with trio.fail_after(20), pytest.raises(_errors.Stalled):
            await c.write_raw(
                "stall.bin", chunks_of(b"\0" * 64 * MiB, 256 * KiB), chunk_size=256 * KiB,
                stall_timeout=0.5,
            )
    assert list(root.iterdir()) == []


async def test_write_raw_bad_arguments(client: Client) -> None:
    with pytest.raises(_errors.ConfigError):
        await client.write_raw("x", b"data", chunk_size=0)
    with pytest.raises(_errors.ConfigError):
        await client.write_raw("x", b"data", chunk_size=MAX_CHUNK_SIZE + 1)
    with pytest.raises(TypeError):
        await client.write_raw("x", 12345)  # type: ignore[arg-type]
    with pytest.raises(_errors.InvalidArgument):
        await client.write_raw("", b"data")


async def test_write_raw_cancelled_midway(client: Client, server: Server) -> None:
    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"y" * 64 * KiB

    with trio.move_on_after(0.3) as scope:
        await client.write_raw("cancel/x.bin", endless())
    assert scope.cancelled_caught
    # Still usable afterwards.
    await client.write_file("after.txt", b"ok")
    assert (server.root / "after.txt").read_bytes() == b"ok"


def test_default_chunk_size_below_grpc_limits() -> None:
    assert 0 < DEFAULT_CHUNK_SIZE < 4 * MiB


# --------------------------------------------------------------------------- ReadRaw


async def test_read_raw(client: Client, server: Server) -> None:
    data = os.urandom(5 * MiB + 17)
    (server.root / "big.bin").write_bytes(data)
    got = bytearray()
    async with client.read_raw("big.bin") as chunks:
        async for part in chunks:
            got += part
    assert bytes(got) == data

    (server.root / "empty.bin").write_bytes(b"")
    async with client.read_raw("empty.bin") as chunks:
        assert [p async for p in chunks] == []


async def test_read_raw_missing(client: Client) -> None:
    with pytest.raises(_errors.NotFound):
        async with client.read_raw("nope.bin") as chunks:
            async for _ in chunks:
                pass  # pragma: no cover


async def test_read_raw_early_exit_and_user_error(client: Client, server: Server) -> None:
    (server.root / "big.bin").write_bytes(os.urandom(8 * MiB))
    async with client.read_raw("big.bin") as chunks:
        async for _ in chunks:
            break
    with pytest.raises(KeyError):  # the caller's own exception comes out unwrapped
        async with client.read_raw("big.bin") as chunks:
            async for _ in chunks:
                raise KeyError("mine")
    assert (await client.stat("big.bin")).size == 8 * MiB


# --------------------------------------------------------------------------- Exec


async def test_exec_streams(client: Client, server: Server) -> None:
    async def stdin() -> AsyncIterator[bytes]:
        for i in range(3):
            await trio.sleep(0.01)
            yield f"line {i}\n".encode()

    seen: list[tuple[str, bytes]] = []
    res = await client.exec(
        "cat; echo oops >&2; exit 7", stdin=stdin(), on_output=lambda n, d: seen.append((n, d))
    )
    assert isinstance(res, ExecResult)
    assert res == ExecResult(7, b"line 0\nline 1\nline 2\n", b"oops\n")
    assert b"".join(d for n, d in seen if n == "stdout") == res.stdout
    assert b"".join(d for n, d in seen if n == "stderr") == b"oops\n"


async def test_exec_env_work_dir_and_bytes_stdin(client: Client, server: Server) -> None:
    (server.root / "wd").mkdir()
    res = await client.exec(
        'pwd; echo "$FOO"; cat', work_dir="wd", env=["FOO=bar"], stdin=b"from stdin"
    )
    assert res.exit_code == 0
    lines = res.stdout.decode().splitlines()
    assert await trio.Path(lines[0]).resolve() == await trio.Path(server.root / "wd").resolve()
    assert lines[1:] == ["bar", "from stdin"]


async def test_exec_timeout_kills(client: Client) -> None:
    with trio.fail_after(15):
        res = await client.exec("sleep 30", timeout_seconds=1)
    assert res.exit_code != 0


# --------------------------------------------------------------------------- auth, TLS, timeouts


async def test_token(make_server: MakeServer) -> None:
    server = await make_server(token="s3cret")
    async with connect(server.target) as c:
        with pytest.raises(_errors.Unauthenticated):
            await c.list_dir("")
        with pytest.raises(_errors.Unauthenticated):
            await c.write_raw("t.bin", b"data")
    async with connect(server.target, token="wrong") as c:
        with pytest.raises(_errors.Unauthenticated):
            await c.mkdir("x")
    assert not (server.root / "x").exists()
    async with connect(server.target, token="s3cret") as c:
        await c.write_raw("t.bin", b"data")
        assert (await c.stat("t.bin")).size == 4


async def test_tls(make_server: MakeServer, certs: Certs) -> None:
    server = await make_server(tls=ServerTLS(cert=certs.server_cert, key=certs.server_key))
    async with connect(server.target, tls=ClientTLS(ca=certs.ca)) as c:
        await c.write_raw("tls.bin", b"secret")
    assert (server.root / "tls.bin").read_bytes() == b"secret"
    async with connect(
        server.target.replace("127.0.0.1", "localhost"), tls=ClientTLS(ca=certs.ca)
    ) as c:
        assert (await c.stat("tls.bin")).size == 6
    with pytest.raises(_errors.Unavailable, match="certificate"):
        async with connect(server.target, tls=ClientTLS(ca=certs.other_ca)):
            pass  # pragma: no cover
    with pytest.raises(_errors.Unavailable):  # plaintext client, TLS server
        async with connect(server.target, connect_timeout=3) as c:
            await c.stat("tls.bin")


async def test_tls_close_leaves_no_socket_open(make_server: MakeServer, certs: Certs) -> None:
    """Closing a TLS connection waits for the TLS shutdown to close the socket (it used to be
    left to the garbage collector: an unclosed socket and transport per connection)."""
    server = await make_server(tls=ServerTLS(cert=certs.server_cert, key=certs.server_key))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(3):
            async with connect(server.target, tls=ClientTLS(ca=certs.ca)) as c:
                await c.write_raw("tls.bin", b"secret")
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


async def test_mtls(make_server: MakeServer, certs: Certs) -> None:
    server = await make_server(
        tls=ServerTLS(cert=certs.server_cert, key=certs.server_key, client_ca=certs.ca)
    )
    good = ClientTLS(ca=certs.ca, cert=certs.client_cert, key=certs.client_key)
    async with connect(server.target, tls=good) as c:
        await c.write_file("m.txt", b"mutual")
    assert (server.root / "m.txt").read_bytes() == b"mutual"
    with pytest.raises(_errors.Unavailable):
        async with connect(server.target, tls=ClientTLS(ca=certs.ca)) as c:
            await c.write_file("n.txt", b"no client cert")
    assert not (server.root / "n.txt").exists()


async def test_timeout(make_server: MakeServer) -> None:
    server = await make_server()
    async with connect(server.target, timeout=0.5) as c:
        with trio.fail_after(10), pytest.raises(_errors.DeadlineExceeded):
            await c.exec("sleep 5")
        await c.mkdir("still-works")
    assert (server.root / "still-works").is_dir()


async def test_unreachable_is_unavailable_quickly() -> None:
    port = free_port()
    with trio.fail_after(5), pytest.raises(
        _errors.Unavailable, match=f"cannot connect to 127.0.0.1:{port}: connection refused"
    ):
        async with connect(f"127.0.0.1:{port}"):
            pass  # pragma: no cover


async def test_connect_timeout_on_silent_peer(certs: Certs) -> None:
    """A listener that never speaks: the TLS handshake cannot finish, connect_timeout fires."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        with trio.fail_after(5), pytest.raises(_errors.Unavailable, match="timed out"):
            async with connect(
                f"127.0.0.1:{port}", tls=ClientTLS(ca=certs.ca), connect_timeout=0.3
            ):
                pass  # pragma: no cover


async def test_server_gone_mid_session(make_server: MakeServer) -> None:
    server = await make_server()
    async with connect(server.target) as c:
        await c.mkdir("a")
        server.stop()
        await trio.sleep(0.2)
        with trio.fail_after(10), pytest.raises(_errors.Unavailable):
            await c.mkdir("b")


@pytest.mark.parametrize(
    "target", ["nohost", "host:", ":80", "host:notaport", "host:70000", "::1:80", "[zz]:1"]
)
def test_bad_targets(target: str) -> None:
    with pytest.raises(_errors.ConfigError):
        parse_target(target)


def test_parse_target() -> None:
    assert parse_target("127.0.0.1:9090") == ("127.0.0.1", 9090)
    assert parse_target("[::1]:9090") == ("::1", 9090)
    assert parse_target("bot.local:1") == ("bot.local", 1)


async def test_connect_closes_on_exit_and_cancel(server: Server) -> None:
    async with connect(server.target) as c:
        await c.mkdir("x")
    assert c.closed
    with pytest.raises(_errors.Unavailable, match="closed"):
        await c.mkdir("y")
    with trio.move_on_after(0.2):
        async with connect(server.target) as c2:
            await trio.sleep_forever()
    assert c2.closed


async def test_body_exception_is_not_wrapped(server: Server) -> None:
    with pytest.raises(KeyError):
        async with connect(server.target):
            raise KeyError("from the body")



async def test_write_raw_server_fails_midway_surfaces_its_status(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Regression: a server ending WriteRaw with an error while we still send (h2 then raised a
    raw StreamClosedError on the next frame or on END_STREAM) surfaces the server's status.

    Only memoh-trio's server has the fault hook, so this test is not parametrized over grpcio.
    """
    from memoh_trio._fs import ServerHooks
    from memoh_trio._server import serve

    root = tmp_path / "root"
    root.mkdir()
    src = tmp_path / "src"
    src.mkdir()
    hooks = ServerHooks(fail_errno=errno.ENOSPC)
    addr = await nursery.start(functools.partial(serve, root, hooks=hooks,
                                                  allow_unauthenticated=True))
    async with connect(str(addr), chunk_size=64 * KiB) as c:
        for size in (100, 70_000, 300_000):
            path = src / f"s{size}"
            path.write_bytes(os.urandom(size))
            for i in range(30):
                hooks.writes = 0
                hooks.fail_write_nth = 1 + i % (size // (64 * KiB) + 1)
                with pytest.raises(_errors.ResourceExhausted, match="injected fault"):
                    await c.write_raw(f"f{size}-{i}", path, expected_size=size)
        hooks.fail_write_nth = None
        await c.write_raw("after.bin", b"ok")  # the connection survived every failure
    assert sorted(p.name for p in root.iterdir()) == ["after.bin"]


def test_map_error_never_leaks_h2_exceptions() -> None:
    import h2.exceptions

    from memoh_trio._bridge.client import map_error

    closed = map_error(h2.exceptions.StreamClosedError(1), "WriteRaw", "t:1")
    assert isinstance(closed, _errors.RPCError) and not isinstance(closed, _errors.Unavailable)
    assert closed.method == "WriteRaw"
    broken = map_error(h2.exceptions.ProtocolError("bad frame"), "Exec", "t:1")
    assert isinstance(broken, _errors.Unavailable) and "bad frame" in str(broken)
