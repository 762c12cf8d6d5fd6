"""The Trio server end to end: real server on 127.0.0.1:0, driven by the generated grpclib stub
through a small test-local helper (the memoh-trio client has its own tests)."""

from __future__ import annotations

import datetime
import errno
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio_asyncio
from grpclib.client import Channel
from grpclib.const import Status as G
from grpclib.exceptions import GRPCError, StreamTerminatedError
from helpers import running

from memoh_trio import _fs
from memoh_trio._bridge import asyncio_loop
from memoh_trio._errors import ConfigError
from memoh_trio._proto.mcpcontainer import (
    ContainerServiceStub,
    DeleteFileRequest,
    ExecInput,
    ExecOutputStream,
    ListDirRequest,
    MkdirRequest,
    ReadFileRequest,
    ReadRawRequest,
    RenameRequest,
    StatRequest,
    WriteFileRequest,
    WriteRawChunk,
)
from memoh_trio._server import ServerAddress, ServerHooks, serve
from memoh_trio._tls import ServerTLS

_T = TypeVar("_T")
#: Every server of these tests requires this token (test_token checks the refusals).
TOKEN = "server-test-token"


def aio(fn: Callable[..., Awaitable[_T]]) -> Callable[..., Awaitable[_T]]:
    wrapped: Callable[..., Awaitable[_T]] = trio_asyncio.aio_as_trio(fn)
    return wrapped


@asynccontextmanager
async def stub_for(addr: ServerAddress, *, token: str | None = None,
                   ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Any]:
    async with asyncio_loop():
        channel = await aio(_open_channel)(addr, ssl_context)
        metadata = {"authorization": f"Bearer {token}"} if token else None
        try:
            yield ContainerServiceStub(channel, metadata=metadata, timeout=10)
        finally:
            channel.close()


async def _open_channel(addr: ServerAddress, ssl_context: ssl.SSLContext | None) -> Channel:
    return Channel(addr.host, addr.port, ssl=ssl_context)


async def _collect(agen: AsyncIterator[_T]) -> list[_T]:
    return [item async for item in agen]


async def call_stream(method: Callable[..., AsyncIterator[_T]], *args: Any,
                      **kwargs: Any) -> list[_T]:
    async def run() -> list[_T]:
        return await _collect(method(*args, **kwargs))

    return await aio(run)()


def temp_files(top: Path) -> list[Path]:
    return [p for p in top.rglob("*") if p.name.startswith(_fs.TEMP_PREFIX)]


async def wait_for(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    """Poll a file-system condition (nothing to wait on but time)."""
    with trio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    (tmp_path / "outside").mkdir()
    return r


async def expect_status(status: G, awaitable: Awaitable[Any]) -> GRPCError:
    with pytest.raises(GRPCError) as info:
        await awaitable
    assert info.value.status == status, info.value
    return info.value


# ------------------------------------------------------------------ every RPC


async def test_server_address_str() -> None:
    assert str(ServerAddress("127.0.0.1", 80)) == "127.0.0.1:80"
    assert str(ServerAddress("::1", 80)) == "[::1]:80"


async def test_unary_rpcs_round_trip(root: Path) -> None:
    async with running(root, token=TOKEN) as addr, stub_for(addr, token=TOKEN) as stub:
        assert addr.host == "127.0.0.1" and addr.port > 0
        await aio(stub.write_file)(WriteFileRequest(path="/a/b.txt", content=b"one\ntwo\n"))
        assert (root / "a/b.txt").read_bytes() == b"one\ntwo\n"
        r = await aio(stub.read_file)(ReadFileRequest(path="a/b.txt", line_offset=2))
        assert (r.content, r.total_lines, r.binary) == ("     2\ttwo\n", 2, False)
        st = (await aio(stub.stat)(StatRequest(path="a/b.txt"))).entry
        assert (st.path, st.is_dir, st.size, st.mode) == ("b.txt", False, 8, "-rw-r--r--")
        datetime.datetime.fromisoformat(st.mod_time.replace("Z", "+00:00"))
        await aio(stub.mkdir)(MkdirRequest(path="m/n"))
        assert (root / "m/n").is_dir()
        listing = await aio(stub.list_dir)(ListDirRequest(path="", recursive=True))
        assert [(e.path, e.is_dir) for e in listing.entries] == [
            ("a", True), ("a/b.txt", False), ("m", True), ("m/n", True)]
        assert listing.entries[0].mode == "drwxr-xr-x"
        await aio(stub.rename)(RenameRequest(old_path="a/b.txt", new_path="x/y/c.txt"))
        assert (root / "x/y/c.txt").exists() and not (root / "a/b.txt").exists()
        await aio(stub.delete_file)(DeleteFileRequest(path="x", recursive=True))
        assert not (root / "x").exists()
        await aio(stub.delete_file)(DeleteFileRequest(path="never/was"))


async def test_error_statuses(root: Path) -> None:
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "esc").symlink_to("../outside")
    async with running(root, token=TOKEN) as addr, stub_for(addr, token=TOKEN) as stub:
        await expect_status(G.NOT_FOUND, aio(stub.stat)(StatRequest(path="missing")))
        await expect_status(G.NOT_FOUND, aio(stub.read_file)(ReadFileRequest(path="missing")))
        await expect_status(G.PERMISSION_DENIED, aio(stub.stat)(StatRequest(path="../x")))
        await expect_status(G.PERMISSION_DENIED,
                            aio(stub.write_file)(WriteFileRequest(path="esc/f", content=b"x")))
        await expect_status(G.INVALID_ARGUMENT, aio(stub.stat)(StatRequest(path="")))
        await expect_status(G.INVALID_ARGUMENT, aio(stub.mkdir)(MkdirRequest(path="")))
        await expect_status(G.INVALID_ARGUMENT,
                            aio(stub.rename)(RenameRequest(old_path="dir", new_path="")))
        await expect_status(G.FAILED_PRECONDITION,
                            aio(stub.delete_file)(DeleteFileRequest(path="dir")))
        await expect_status(G.INVALID_ARGUMENT, aio(stub.stat)(StatRequest(path="a\x00b")))
    assert os.listdir(root.parent / "outside") == []


async def test_write_raw_and_read_raw(root: Path) -> None:
    blob = os.urandom(3 * 1024 * 1024 + 17)
    chunks = [WriteRawChunk(path="big/blob.bin", data=blob[:1000])] + [
        WriteRawChunk(data=blob[i:i + (1 << 20)]) for i in range(1000, len(blob), 1 << 20)]
    async with running(root, token=TOKEN) as addr, stub_for(addr, token=TOKEN) as stub:
        resp = await aio(stub.write_raw)(chunks)
        assert resp.bytes_written == len(blob)
        assert (root / "big/blob.bin").read_bytes() == blob
        got = await call_stream(stub.read_raw, ReadRawRequest(path="/big/blob.bin"))
        assert b"".join(c.data for c in got) == blob
        assert len(got) > 1
        empty = await aio(stub.write_raw)([WriteRawChunk(path="empty")])
        assert empty.bytes_written == 0 and (root / "empty").read_bytes() == b""
        with pytest.raises(GRPCError) as info:
            await call_stream(stub.read_raw, ReadRawRequest(path="nope"))
        assert info.value.status == G.NOT_FOUND
    assert temp_files(root) == []


async def test_write_raw_bad_streams(root: Path) -> None:
    (root / "keep").write_bytes(b"old")
    async with running(root, token=TOKEN) as addr, stub_for(addr, token=TOKEN) as stub:
        # No message at all: OK, 0 bytes, nothing created (as Memoh's Go server; issue 10).
        nothing = await aio(stub.write_raw)([])
        assert nothing.bytes_written == 0
        await expect_status(G.INVALID_ARGUMENT,
                            aio(stub.write_raw)([WriteRawChunk(data=b"no path")]))
        err = await expect_status(G.ABORTED, aio(stub.write_raw)([
            WriteRawChunk(path="keep", data=b"new data"), WriteRawChunk(data=b"more"),
            WriteRawChunk(abort=True)]))
        assert "aborted" in (err.message or "")
        await expect_status(G.ABORTED, aio(stub.write_raw)([
            WriteRawChunk(path="fresh", data=b"x", abort=True)]))
        await expect_status(G.PERMISSION_DENIED,
                            aio(stub.write_raw)([WriteRawChunk(path="../x", data=b"x")]))
    assert (root / "keep").read_bytes() == b"old"
    assert not (root / "fresh").exists()
    assert sorted(os.listdir(root)) == ["keep"]


async def test_message_over_limit_rejected(root: Path) -> None:
    # The server answers RESOURCE_EXHAUSTED then resets the stream; grpclib's client may see
    # the reset first (StreamTerminatedError). The exact status is checked with grpcio in
    # test_interop_grpcio_client.py.
    async with running(root, token=TOKEN, max_message_size=64 * 1024) as addr, \
            stub_for(addr, token=TOKEN) as stub:
        with pytest.raises((GRPCError, StreamTerminatedError)) as info:
            await aio(stub.write_raw)(
                [WriteRawChunk(path="f", data=b"x" * 10), WriteRawChunk(data=b"y" * 100_000)])
        if isinstance(info.value, GRPCError):
            assert info.value.status == G.RESOURCE_EXHAUSTED
            assert "exceeds" in (info.value.message or "")
        # the server is still fine afterwards
        ok = await aio(stub.write_raw)([WriteRawChunk(path="g", data=b"y" * 60_000)])
        assert ok.bytes_written == 60_000
    assert not (root / "f").exists() and temp_files(root) == []


# ------------------------------------------------------------------ exec


async def test_exec_streams_and_exit_code(root: Path) -> None:
    (root / "w").mkdir()

    async def inputs() -> AsyncIterator[ExecInput]:
        yield ExecInput(command="cat; echo \"$FOO\" >&2; pwd; exit 3", work_dir="/w",
                        env=["FOO=bar"])
        yield ExecInput(stdin_data=b"first ")
        yield ExecInput(stdin_data=b"second\n")

    async with running(root, token=TOKEN) as addr, stub_for(addr, token=TOKEN) as stub:
        out = await call_stream(stub.exec, inputs())
    assert out[-1].stream == ExecOutputStream.EXIT and out[-1].exit_code == 3
    assert sum(o.stream == ExecOutputStream.EXIT for o in out) == 1
    stdout = b"".join(o.data for o in out if o.stream == ExecOutputStream.STDOUT)
    stderr = b"".join(o.data for o in out if o.stream == ExecOutputStream.STDERR)
    assert stdout == b"first second\n" + os.fsencode(root / "w") + b"\n"
    assert stderr == b"bar\n"


async def test_exec_refuses_stdin_in_the_first_message(root: Path) -> None:
    """Memoh's server drops the first message's stdin; ours refuses it, so a client that relies
    on it fails here as loudly as it loses data there."""

    async def inputs() -> AsyncIterator[ExecInput]:
        yield ExecInput(command="cat > got", stdin_data=b"lost on Memoh's server")

    async with running(root, token=TOKEN) as addr, stub_for(addr, token=TOKEN) as stub:
        with pytest.raises(GRPCError) as info:
            await call_stream(stub.exec, inputs())
    assert info.value.status == G.INVALID_ARGUMENT
    assert "first ExecInput" in (info.value.message or "")
    assert not (root / "got").exists()


async def test_exec_timeout_kills_process_group(root: Path) -> None:
    async with running(root, token=TOKEN) as addr, stub_for(addr, token=TOKEN) as stub:
        out = await call_stream(stub.exec, [ExecInput(
            command="sleep 30 & echo $! > child.pid; echo started; wait", timeout_seconds=1)])
    assert out[-1].exit_code == 128 + 9
    child = int((root / "child.pid").read_text())

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        # a zombie is dead too
        return Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"

    await wait_for(gone)


async def test_exec_signal_and_bad_requests(root: Path) -> None:
    (root / "esc").symlink_to("../outside")
    async with running(root, token=TOKEN) as addr, stub_for(addr, token=TOKEN) as stub:
        out = await call_stream(stub.exec, [ExecInput(command="kill -TERM $$")])
        assert out[-1].exit_code == 128 + 15
        for bad, status in [
            (ExecInput(command=""), G.INVALID_ARGUMENT),
            (ExecInput(command="touch pwned", work_dir="esc"), G.PERMISSION_DENIED),
            (ExecInput(command="true", work_dir="missing"), G.NOT_FOUND),
            (ExecInput(command="true", env=["NOEQUALS"]), G.INVALID_ARGUMENT),
        ]:
            with pytest.raises(GRPCError) as info:
                await call_stream(stub.exec, [bad])
            assert info.value.status == status
    assert os.listdir(root.parent / "outside") == []


# ------------------------------------------------------------------ auth and TLS


async def test_token(root: Path) -> None:
    async with running(root, token="s3cret") as addr:
        for token in (None, "wrong"):
            async with stub_for(addr, token=token) as stub:
                await expect_status(G.UNAUTHENTICATED, aio(stub.write_file)(
                    WriteFileRequest(path="f", content=b"x")))
                with pytest.raises(GRPCError) as info:
                    await call_stream(stub.exec, [ExecInput(command="touch executed")])
                assert info.value.status == G.UNAUTHENTICATED
        assert os.listdir(root) == []
        async with stub_for(addr, token="s3cret") as stub:
            await aio(stub.write_file)(WriteFileRequest(path="f", content=b"x"))
    assert (root / "f").exists()


def _make_certs(tmp: Path) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool,
             san: bool = False) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=1))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            import ipaddress

            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    out: dict[str, Path] = {}

    def save(label: str, c: x509.Certificate, k: Any) -> None:
        out[label] = tmp / f"{label}.pem"
        out[label].write_bytes(c.public_bytes(serialization.Encoding.PEM))
        out[label + "_key"] = tmp / f"{label}.key"
        out[label + "_key"].write_bytes(k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    for prefix in ("", "other_"):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        save(prefix + "ca", cert(prefix + "ca", ca_key, prefix + "ca", ca_key, ca=True), ca_key)
        srv_key = ec.generate_private_key(ec.SECP256R1())
        save(prefix + "server", cert("localhost", srv_key, prefix + "ca", ca_key, ca=False,
                                     san=True), srv_key)
        cli_key = ec.generate_private_key(ec.SECP256R1())
        save(prefix + "client", cert("client", cli_key, prefix + "ca", ca_key, ca=False),
             cli_key)
    return out


def _client_ctx(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert and key:
        ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def test_tls_and_mtls(root: Path, tmp_path: Path) -> None:
    c = _make_certs(tmp_path)
    tls = ServerTLS(cert=c["server"], key=c["server_key"])
    async with running(root, token=TOKEN, tls=tls) as addr:
        async with stub_for(addr, token=TOKEN, ssl_context=_client_ctx(c["ca"])) as stub:
            await aio(stub.write_file)(WriteFileRequest(path="tls", content=b"x"))
        async with stub_for(addr, token=TOKEN, ssl_context=_client_ctx(c["other_ca"])) as stub:
            with pytest.raises((ssl.SSLError, OSError, GRPCError, StreamTerminatedError)):
                await aio(stub.write_file)(WriteFileRequest(path="wrong-ca", content=b"x"))
    mtls = ServerTLS(cert=c["server"], key=c["server_key"], client_ca=c["ca"])
    async with running(root, token=TOKEN, tls=mtls) as addr:
        good = _client_ctx(c["ca"], c["client"], c["client_key"])
        async with stub_for(addr, token=TOKEN, ssl_context=good) as stub:
            await aio(stub.write_file)(WriteFileRequest(path="mtls", content=b"x"))
        for ctx in (_client_ctx(c["ca"]),
                    _client_ctx(c["ca"], c["other_client"], c["other_client_key"])):
            async with stub_for(addr, token=TOKEN, ssl_context=ctx) as stub:
                with pytest.raises((ssl.SSLError, OSError, GRPCError, StreamTerminatedError)):
                    await aio(stub.write_file)(WriteFileRequest(path="no-cert", content=b"x"))
    assert sorted(os.listdir(root)) == ["mtls", "tls"]


# ------------------------------------------------------------------ disconnects, shutdown, faults


class StuckUpload:
    """A WriteRaw that sends one chunk, then holds the stream open until :meth:`release`."""

    def __init__(self) -> None:
        import asyncio

        self._release = asyncio.Event()

    def release(self) -> None:
        self._release.set()  # same thread: safe to call from the Trio side

    async def run(self, stub: Any, path: str) -> None:
        async def chunks() -> AsyncIterator[WriteRawChunk]:
            yield WriteRawChunk(path=path, data=b"x" * 100_000)
            await self._release.wait()
            yield WriteRawChunk(data=b"late")

        await aio(stub.write_raw)(chunks())


async def test_client_disconnect_mid_write_raw_leaves_no_temp_file(root: Path) -> None:
    errors: list[BaseException] = []
    async with running(root, token=TOKEN) as addr, stub_for(addr, token=TOKEN) as stub, \
            trio.open_nursery() as nursery:
        upload = StuckUpload()
        nursery.start_soon(_expect_failure, upload.run(stub, "d/up.bin"), errors)
        await wait_for(lambda: bool(temp_files(root)))
        stub.channel.close()  # the client goes away mid-stream
        await wait_for(lambda: not temp_files(root))
        upload.release()
    assert not (root / "d/up.bin").exists()
    assert len(errors) == 1


async def test_cancelling_serve_discards_in_flight_uploads(root: Path) -> None:
    errors: list[BaseException] = []
    server_scope = trio.CancelScope()
    server_done = trio.Event()

    async def run_server(task_status: trio.TaskStatus[ServerAddress]) -> None:
        with server_scope:
            await serve(root, token=TOKEN, task_status=task_status)
        server_done.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            addr = await nursery.start(run_server)
            async with stub_for(addr, token=TOKEN) as stub, trio.open_nursery() as clients:
                uploads = [StuckUpload() for _ in range(3)]
                for i, upload in enumerate(uploads):
                    clients.start_soon(_expect_failure, upload.run(stub, f"up{i}"), errors)
                await wait_for(lambda: len(temp_files(root)) == 3)
                server_scope.cancel()
                await server_done.wait()  # serve returns only once uploads are discarded
                assert temp_files(root) == []
                for upload in uploads:
                    upload.release()
    assert os.listdir(root) == []
    assert len(errors) == 3  # every client saw its call fail


async def _expect_failure(call: Awaitable[Any], errors: list[BaseException]) -> None:
    try:
        await call
    except (GRPCError, StreamTerminatedError, OSError) as exc:
        errors.append(exc)


async def test_hook_fail_nth_write(root: Path) -> None:
    hooks = ServerHooks(fail_write_nth=3, fail_errno=errno.ENOSPC)
    async with running(root, token=TOKEN, hooks=hooks) as addr, stub_for(addr, token=TOKEN) as stub:
        ok = await aio(stub.write_raw)([WriteRawChunk(path="a", data=b"1"),
                                        WriteRawChunk(data=b"2")])
        assert ok.bytes_written == 2
        await expect_status(G.RESOURCE_EXHAUSTED, aio(stub.write_raw)(
            [WriteRawChunk(path="b", data=b"1"), WriteRawChunk(data=b"2")]))
    assert (root / "a").exists() and not (root / "b").exists() and temp_files(root) == []


async def test_hook_stall_then_client_deadline(root: Path) -> None:
    hooks = ServerHooks(stall_after_bytes=1)
    async with running(root, token=TOKEN, hooks=hooks) as addr, stub_for(addr, token=TOKEN) as stub:
        with pytest.raises((GRPCError, TimeoutError)):  # grpclib raises TimeoutError itself
            await aio(stub.write_raw)(
                [WriteRawChunk(path="s", data=b"1"), WriteRawChunk(data=b"2")], timeout=0.5)
        assert hooks.stalls == 1
        await wait_for(lambda: not temp_files(root))
    assert not (root / "s").exists()


async def test_many_concurrent_streams_from_several_clients(root: Path) -> None:
    payload = {f"c{c}/f{i}": os.urandom(50_000 + i) for c in range(3) for i in range(5)}
    async with running(root, token=TOKEN) as addr:

        async def client(c: int) -> None:
            async with stub_for(addr, token=TOKEN) as stub, trio.open_nursery() as nursery:
                for path, data in payload.items():
                    if path.startswith(f"c{c}/"):
                        nursery.start_soon(aio(stub.write_raw), [
                            WriteRawChunk(path=path, data=data[:1000]),
                            WriteRawChunk(data=data[1000:])])

        async with trio.open_nursery() as nursery:
            for c in range(3):
                nursery.start_soon(client, c)
    for path, data in payload.items():
        assert (root / path).read_bytes() == data
    assert temp_files(root) == []


async def test_serve_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        await serve(tmp_path / "missing", allow_unauthenticated=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        await serve(tmp_path / "file", allow_unauthenticated=True)
    with pytest.raises(ConfigError, match="max_frame_size"):
        await serve(tmp_path, max_frame_size=10, allow_unauthenticated=True)
