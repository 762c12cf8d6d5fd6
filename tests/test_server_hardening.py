"""Server hardening (issue 4): confinement under fuzzing and races, limits, disconnects,
concurrency, Exec process groups, and refusals.

The server runs in a background thread (its own ``trio.run``) and is driven by grpcio's blocking
client, an independent gRPC implementation, so that hypothesis can fire hundreds of real RPCs at
one server. Beside the served ``root`` sits a sentinel directory ``outside`` (reachable from root
only through escaping symlinks); after every example it must be byte-for-byte unchanged, nothing
new may appear beside ``root``, and no successful reply may carry anything that only exists
outside.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.grpcio_peer import load_stubs
from memoh_trio import _fs
from memoh_trio._server import ServerAddress, serve
from memoh_trio._tls import ServerTLS

pb, pb_grpc = load_stubs()

#: Content and a name that exist only outside ROOT: a reply carrying either leaked something.
SECRET = b"SECRET-OUTSIDE-CONTENT-9f1c"
OUTSIDE_ONLY_NAME = "zz-outside-only.txt"


# --------------------------------------------------------------------------- harness


@dataclass
class Served:
    address: ServerAddress
    stop: Callable[[], None]

    @property
    def target(self) -> str:
        return str(self.address)


#: The token every server of these tests requires unless a test sets ``token=`` itself
#: (``token=None``: unauthenticated, explicitly).
TOKEN = "hardening-test-token"


@contextlib.contextmanager
def server_thread(root: Path, **kwargs: Any) -> Iterator[Served]:
    """Run ``serve(root, **kwargs)`` in a thread with its own Trio run; stop it on exit."""
    started: queue.Queue[Any] = queue.Queue()

    async def main() -> None:
        try:
            async with trio.open_nursery() as nursery:
                kwargs.setdefault("token", TOKEN)
                if kwargs["token"] is None:  # token=None: unauthenticated, explicitly
                    kwargs["allow_unauthenticated"] = True
                addr = await nursery.start(partial(serve, root, **kwargs))
                token = trio.lowlevel.current_trio_token()
                started.put((addr, token, nursery.cancel_scope))
        except BaseException as exc:  # reported to the test thread
            started.put(exc)
            raise

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    item = started.get(timeout=10)
    if isinstance(item, BaseException):
        raise item
    addr, token, scope = item

    def stop() -> None:
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(timeout=15)
        assert not thread.is_alive(), "the server did not stop within 15 s"

    try:
        yield Served(addr, stop)
    finally:
        if thread.is_alive():
            stop()


def stub_for(target: str, *, token: str | None = TOKEN,
             credentials: grpc.ChannelCredentials | None = None) -> tuple[Any, grpc.Channel]:
    options = [("grpc.ssl_target_name_override", "localhost")] if credentials else []
    channel = (grpc.secure_channel(target, credentials, options=options) if credentials
               else grpc.insecure_channel(target))
    stub = pb_grpc.ContainerServiceStub(channel)
    if token is not None:
        stub = _WithMetadata(stub, [("authorization", f"Bearer {token}")])
    return stub, channel


class _WithMetadata:
    """A stub whose every call carries ``metadata``."""

    def __init__(self, stub: Any, metadata: list[tuple[str, str]]) -> None:
        self._stub, self._metadata = stub, metadata

    def __getattr__(self, name: str) -> Any:
        return _BoundMethod(getattr(self._stub, name), self._metadata)


class _BoundMethod:
    """A grpcio multi-callable with ``metadata`` added to calls and ``.future`` calls."""

    def __init__(self, method: Any, metadata: list[tuple[str, str]]) -> None:
        self._method, self._metadata = method, metadata

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._method(*args, metadata=self._metadata, **kwargs)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return self._method.future(*args, metadata=self._metadata, **kwargs)


def snapshot(top: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``top`` with type, mode, size, mtime, content / link target."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st_ = os.lstat(p)
            rel = os.path.relpath(p, top)
            if os.path.islink(p):
                extra: Any = os.readlink(p)
            elif os.path.isfile(p):
                extra = Path(p).read_bytes()
            else:
                extra = None
            out[rel] = (st_.st_mode, st_.st_size, st_.st_mtime_ns, st_.st_ino, extra)
    return out


_TEMP_NAME = re.compile(re.escape(_fs.TEMP_PREFIX) + r"[0-9a-f]{16}")


def temp_files(top: Path) -> list[str]:
    """The server's own temporary upload files (a client may name a file ``.memoh-tmp-``)."""
    return [os.path.join(d, n) for d, ds, fs in os.walk(top) for n in ds + fs
            if _TEMP_NAME.fullmatch(n)]


def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def make_outside(base: Path) -> Path:
    outside = base / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "secret.txt").write_bytes(SECRET + b"\n")
    (outside / "sub" / OUTSIDE_ONLY_NAME).write_bytes(SECRET)
    (outside / "d").mkdir()
    (outside / "d" / "secret.txt").write_bytes(SECRET)
    return outside


def populate_root(root: Path, outside: Path) -> None:
    """(Re)build the served tree: ordinary entries and every kind of escaping symlink."""
    for child in list(root.iterdir()):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "sub" / "file.txt").write_bytes(b"inside file\n")
    (root / "sub" / "deep" / "x").write_bytes(b"x")
    (root / "esc").symlink_to("../outside")               # relative, escaping
    (root / "abs").symlink_to(outside)                     # absolute, escaping
    (root / "sub" / "up").symlink_to("../../outside")      # escaping from below
    (root / "sub" / "upfile").symlink_to("../../outside/secret.txt")
    (root / "esc_file").symlink_to("../outside/secret.txt")
    (root / "loop").symlink_to("loop")                     # ELOOP
    (root / "inner").symlink_to("sub")                     # inside: allowed
    (root / "dot").symlink_to(".")                         # the root itself


# --------------------------------------------------------------------------- path fuzzing


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Served]]:
    base = tmp_path_factory.mktemp("fuzz")
    root = base / "root"
    root.mkdir()
    outside = make_outside(base)
    populate_root(root, outside)
    with server_thread(root, durable=False) as served:
        yield root, outside, served


_COMPONENTS = [
    "..", ".", "", "esc", "abs", "sub", "up", "upfile", "esc_file", "loop", "inner", "dot",
    "deep", "x", "file.txt", "secret.txt", "d", "outside", "root", "new", "...", " ", "\\",
    "..\\..", "%2e%2e", "sub/..", "*",
]

paths = st.one_of(
    st.builds(
        lambda lead, parts, trail: lead + "/".join(parts) + trail,
        st.sampled_from(["", "/", "//", "./", "../", "/../"]),
        st.lists(st.sampled_from(_COMPONENTS), max_size=6),
        st.sampled_from(["", "/", "/."]),
    ),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
)

_OPS = ["ReadFile", "WriteFile", "ListDir", "Stat", "Mkdir", "Rename", "Exec", "ReadRaw",
        "WriteRaw", "DeleteFile"]

ops = st.tuples(st.sampled_from(_OPS), paths, paths, st.booleans())

# Statuses a confined server may answer with; UNKNOWN would be an unhandled exception.
_ALLOWED = {
    grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
}


def run_op(stub: Any, op: tuple[str, str, str, bool]) -> list[bytes]:
    """Run one RPC; return the serialized successful replies."""
    name, path, other, flag = op
    if name == "ReadFile":
        return [stub.ReadFile(pb.ReadFileRequest(path=path), timeout=10).SerializeToString()]
    if name == "WriteFile":
        return [stub.WriteFile(pb.WriteFileRequest(path=path, content=b"W-written"),
                               timeout=10).SerializeToString()]
    if name == "ListDir":
        reply = stub.ListDir(pb.ListDirRequest(path=path, recursive=flag), timeout=10)
        return [reply.SerializeToString()]
    if name == "Stat":
        return [stub.Stat(pb.StatRequest(path=path), timeout=10).SerializeToString()]
    if name == "Mkdir":
        return [stub.Mkdir(pb.MkdirRequest(path=path), timeout=10).SerializeToString()]
    if name == "Rename":
        return [stub.Rename(pb.RenameRequest(old_path=path, new_path=other),
                            timeout=10).SerializeToString()]
    if name == "Exec":
        outputs = list(stub.Exec(iter([pb.ExecInput(
            command="pwd -P; ls -a; touch ./exec-mark", work_dir=path, timeout_seconds=5,
        )]), timeout=10))
        return [o.SerializeToString() for o in outputs]
    if name == "ReadRaw":
        return [c.SerializeToString()
                for c in stub.ReadRaw(pb.ReadRawRequest(path=path), timeout=10)]
    if name == "WriteRaw":
        chunks = [pb.WriteRawChunk(path=path, data=b"raw-1"), pb.WriteRawChunk(data=b"raw-2")]
        return [stub.WriteRaw(iter(chunks), timeout=10).SerializeToString()]
    if name == "DeleteFile":
        return [stub.DeleteFile(pb.DeleteFileRequest(path=path, recursive=flag),
                                timeout=10).SerializeToString()]
    raise AssertionError(name)


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sequence=st.lists(ops, min_size=1, max_size=3))
def test_fuzzed_paths_never_leave_root(fuzz_env: tuple[Path, Path, Served],
                                       sequence: list[tuple[str, str, str, bool]]) -> None:
    root, outside, served = fuzz_env
    populate_root(root, outside)
    base_before = sorted(os.listdir(root.parent))
    outside_before = snapshot(outside)
    stub, channel = stub_for(served.target)
    real_root = os.path.realpath(root)
    with channel:
        for op in sequence:
            try:
                replies = run_op(stub, op)
            except grpc.RpcError as exc:
                assert exc.code() in _ALLOWED, (op, exc.code(), exc.details())
                assert SECRET.decode() not in (exc.details() or "")
                continue
            for reply in replies:
                assert SECRET not in reply, (op, reply)
                assert OUTSIDE_ONLY_NAME.encode() not in reply, (op, reply)
            if op[0] == "Exec":
                # pwd -P of the command: the work_dir resolved inside ROOT.
                out = b"".join(pb.ExecOutput.FromString(r).data for r in replies
                               if pb.ExecOutput.FromString(r).stream == pb.ExecOutput.STDOUT)
                cwd = out.split(b"\n", 1)[0].decode()
                assert cwd == real_root or cwd.startswith(real_root + "/"), (op, cwd)
    assert snapshot(outside) == outside_before, sequence
    assert sorted(os.listdir(root.parent)) == base_before, sequence
    assert root.is_dir() and not root.is_symlink()
    assert temp_files(root) == []


# --------------------------------------------------------------------------- explicit escapes


@pytest.fixture
def env(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    root.mkdir()
    outside = make_outside(tmp_path)
    populate_root(root, outside)
    return root, outside


_ESCAPES = ["../outside/secret.txt", "esc/secret.txt", "abs/secret.txt", "sub/up/secret.txt",
            "esc_file", "sub/upfile", "inner/up/secret.txt", "dot/esc/secret.txt",
            "/../outside/secret.txt", "sub/../../outside/secret.txt"]
_ESCAPE_DIRS = ["esc", "abs", "sub/up", "inner/up", "esc/sub", "../outside", "dot/esc"]
_FINAL_LINKS = {"esc", "abs", "esc_file", "sub/upfile", "sub/up", "inner/up", "dot/esc"}


def test_every_rpc_refuses_each_escape(env: tuple[Path, Path]) -> None:
    """The explicit catalogue (the fuzzer's counterpart): every RPC x every escape is refused
    with PERMISSION_DENIED (or NOT_FOUND/INVALID_ARGUMENT), never served."""
    root, outside = env
    before = snapshot(outside)
    with server_thread(root, durable=False) as served:
        stub, channel = stub_for(served.target)
        with channel:
            for path in _ESCAPES + _ESCAPE_DIRS:
                for name in _OPS:
                    for other in ("moved", path):
                        op = (name, path, other, True)
                        if name == "Rename" and other == path:
                            op = (name, "sub/file.txt", path, True)
                        try:
                            run_op(stub, op)
                        except grpc.RpcError as exc:
                            assert exc.code() in (grpc.StatusCode.PERMISSION_DENIED,
                                                  grpc.StatusCode.NOT_FOUND,
                                                  grpc.StatusCode.INVALID_ARGUMENT), (op, exc)
                        else:
                            # Only calls acting on a final symlink itself may succeed: DeleteFile
                            # removes the link, Rename moves it (or replaces it), WriteFile and
                            # WriteRaw replace it with a file. Nothing is ever followed out.
                            assert name in ("DeleteFile", "Rename", "WriteFile", "WriteRaw"), op
                            assert path in _FINAL_LINKS, op
                        populate_root(root, outside)
    assert snapshot(outside) == before
    assert temp_files(root) == []


def test_listdir_recursive_does_not_descend_symlinks(env: tuple[Path, Path]) -> None:
    root, _outside = env
    with server_thread(root, durable=False) as served:
        stub, channel = stub_for(served.target)
        with channel:
            reply = stub.ListDir(pb.ListDirRequest(path="", recursive=True), timeout=10)
            inner = stub.ListDir(pb.ListDirRequest(path="inner", recursive=True), timeout=10)
    paths_ = {e.path for e in reply.entries}
    assert "esc" in paths_ and "sub/up" in paths_  # the links themselves are listed
    assert not any(p.startswith(("esc/", "abs/", "sub/up/", "inner/", "dot/")) for p in paths_)
    assert OUTSIDE_ONLY_NAME.encode() not in reply.SerializeToString()
    assert {e.path for e in inner.entries} >= {"file.txt", "deep", "deep/x"}


# --------------------------------------------------------------------------- symlink races

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> None:
    """Atomically swap two names (renameat2 RENAME_EXCHANGE)."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b),
                       _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


def test_directory_swapped_for_symlink_mid_write_raw(env: tuple[Path, Path]) -> None:
    """The parent of an upload is swapped for a symlink to outside between two chunks: the upload
    must not be redirected (it completes in the directory it started in)."""
    root, outside = env
    (root / "d").mkdir()
    before = snapshot(outside)
    go_on = threading.Event()

    def chunks() -> Iterator[Any]:
        yield pb.WriteRawChunk(path="d/target.bin", data=b"A" * 1000)
        assert go_on.wait(10)
        yield pb.WriteRawChunk(data=b"B" * 1000)

    with server_thread(root, durable=False) as served:
        stub, channel = stub_for(served.target)
        with channel:
            future = stub.WriteRaw.future(chunks(), timeout=20)
            assert wait_until(lambda: bool(temp_files(root / "d")))
            (root / "d").rename(root / "d.moved")
            (root / "d").symlink_to("../outside/d")
            go_on.set()
            assert future.result().bytes_written == 2000
            # A new request through the swapped name is refused, not followed.
            with pytest.raises(grpc.RpcError) as info:
                stub.WriteFile(pb.WriteFileRequest(path="d/again", content=b"z"), timeout=10)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (root / "d.moved" / "target.bin").read_bytes() == b"A" * 1000 + b"B" * 1000
    assert snapshot(outside) == before
    assert temp_files(root) == []


def test_symlink_swap_race_under_load(env: tuple[Path, Path]) -> None:
    """A thread atomically exchanges ``root/d`` (a directory) with a symlink to outside as fast
    as it can while clients hammer every path-taking RPC under ``d``: nothing outside changes
    and no reply carries outside data."""
    root, outside = env
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "secret.txt").write_bytes(b"inside")
    (root / "swap").symlink_to("../outside/d")
    before = snapshot(outside)
    stop = threading.Event()
    swaps = 0

    def swapper() -> None:
        nonlocal swaps
        while not stop.is_set():
            exchange(root / "d", root / "swap")
            swaps += 1

    leaks: list[Any] = []
    errors: list[BaseException] = []

    def client(n: int, target: str) -> None:
        stub, channel = stub_for(target)
        with channel:
            for i in range(40):
                for op in (
                    ("WriteRaw", f"d/sub/f{n}-{i}", "", False),
                    ("WriteFile", f"d/w{n}-{i}", "", False),
                    ("Mkdir", f"d/m{n}-{i}/x", "", False),
                    ("ReadFile", "d/secret.txt", "", False),
                    ("ReadRaw", "d/secret.txt", "", False),
                    ("ListDir", "d", "", True),
                    ("Stat", "d/secret.txt", "", False),
                    ("Rename", f"d/w{n}-{i}", f"d/sub/r{n}-{i}", False),
                    ("DeleteFile", f"d/m{n}-{i}", "", True),
                    ("Exec", "d", "", False),
                ):
                    try:
                        for reply in run_op(stub, op):
                            if SECRET in reply or OUTSIDE_ONLY_NAME.encode() in reply:
                                leaks.append((op, reply))
                    except grpc.RpcError as exc:
                        if exc.code() not in _ALLOWED:
                            errors.append(exc)

    with server_thread(root, durable=False) as served:
        swap_thread = threading.Thread(target=swapper)
        swap_thread.start()
        try:
            workers = [threading.Thread(target=client, args=(n, served.target))
                       for n in range(3)]
            for w in workers:
                w.start()
            for w in workers:
                w.join(60)
        finally:
            stop.set()
            swap_thread.join()
    assert swaps > 100
    assert leaks == []
    assert errors == []
    after = snapshot(outside)
    assert after == before, set(after) ^ set(before)
    assert temp_files(root) == []


# --------------------------------------------------------------------------- limits


def test_messages_over_the_limit_are_rejected_cleanly(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    limit = 64 * 1024
    with server_thread(root, durable=False, max_message_size=limit) as served:
        stub, channel = stub_for(served.target)
        with channel:
            big = b"x" * (limit + 1)
            with pytest.raises(grpc.RpcError) as info:
                stub.WriteFile(pb.WriteFileRequest(path="big", content=big), timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "exceeds the server limit" in (info.value.details() or "")
            # Over the limit in the middle of an upload: the part already written is discarded.
            chunks = [pb.WriteRawChunk(path="raw", data=b"a" * 1000),
                      pb.WriteRawChunk(data=big)]
            with pytest.raises(grpc.RpcError) as info:
                stub.WriteRaw(iter(chunks), timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Exec(iter([pb.ExecInput(command="cat > /dev/null; touch ran"),
                                     pb.ExecInput(stdin_data=big)]), timeout=10))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # Exactly at the limit (message = 5-byte-free protobuf) is fine; the server lives on.
            ok = b"y" * (limit - 16)
            stub.WriteFile(pb.WriteFileRequest(path="fits", content=ok), timeout=10)
            assert (root / "fits").read_bytes() == ok
    assert sorted(os.listdir(root)) == ["fits"]


# --------------------------------------------------------------------------- disconnects


def test_client_cancel_mid_write_raw_leaves_no_temp_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    hold = threading.Event()

    def chunks() -> Iterator[Any]:
        yield pb.WriteRawChunk(path="half.bin", data=b"h" * 100_000)
        hold.wait(10)
        yield pb.WriteRawChunk(data=b"never")

    with server_thread(root, durable=False) as served:
        stub, channel = stub_for(served.target)
        with channel:
            future = stub.WriteRaw.future(chunks(), timeout=20)
            assert wait_until(lambda: bool(temp_files(root)))
            future.cancel()
            hold.set()
            assert wait_until(lambda: not temp_files(root)), temp_files(root)
            # The server still serves.
            stub.Stat(pb.StatRequest(path="/"), timeout=5)
    assert os.listdir(root) == []


_KILLED_CLIENT = r"""
import sys, time, grpc
sys.path.insert(0, sys.argv[2])
from benchmarks.grpcio_peer import load_stubs
pb, pb_grpc = load_stubs()
stub = pb_grpc.ContainerServiceStub(grpc.insecure_channel(sys.argv[1]))
def chunks():
    yield pb.WriteRawChunk(path="killed.bin", data=b"k" * 200_000)
    print("sent", flush=True)
    time.sleep(60)
    yield pb.WriteRawChunk(data=b"never")
stub.WriteRaw(chunks(), metadata=[("authorization", "Bearer " + sys.argv[3])])
"""


def test_client_process_killed_mid_write_raw_leaves_no_temp_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with server_thread(root, durable=False) as served:
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILLED_CLIENT, served.target, os.getcwd(), TOKEN],
            stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"sent"
            assert wait_until(lambda: bool(temp_files(root)))
            proc.kill()
        finally:
            proc.kill()
            proc.wait()
        assert wait_until(lambda: not temp_files(root)), temp_files(root)
    assert os.listdir(root) == []


# --------------------------------------------------------------------------- concurrency


def test_many_concurrent_streams_from_several_clients(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    results: dict[str, bytes] = {}
    failures: list[BaseException] = []

    def worker(stub: Any, name: str) -> None:
        data = os.urandom(200_000)
        try:
            chunks = [pb.WriteRawChunk(path=f"c/{name}", data=data[:50_000])] + [
                pb.WriteRawChunk(data=data[i:i + 50_000]) for i in range(50_000, 200_000, 50_000)]
            assert stub.WriteRaw(iter(chunks), timeout=30).bytes_written == len(data)
            back = b"".join(c.data for c in stub.ReadRaw(pb.ReadRawRequest(path=f"c/{name}"),
                                                         timeout=30))
            assert back == data
            results[name] = data
        except BaseException as exc:
            failures.append(exc)

    with server_thread(root, durable=False) as served:
        channels = [stub_for(served.target) for _ in range(4)]
        threads = [threading.Thread(target=worker, args=(channels[i % 4][0], f"f{i}"))
                   for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for _, channel in channels:
            channel.close()
    assert failures == []
    assert len(results) == 32
    for name, data in results.items():
        assert (root / "c" / name).read_bytes() == data
    assert temp_files(root) == []


# --------------------------------------------------------------------------- Exec groups


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


_SPAWN_FAMILY = (
    "sleep 60 & echo $! > child.pid; "
    "sh -c 'sleep 60 & echo $! > grandchild.pid; wait' & "
    "echo started; wait"
)


def test_exec_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with server_thread(root, durable=False) as served:
        stub, channel = stub_for(served.target)
        with channel:
            start = time.monotonic()
            outputs = list(stub.Exec(iter([pb.ExecInput(command=_SPAWN_FAMILY,
                                                       timeout_seconds=1)]), timeout=20))
            elapsed = time.monotonic() - start
    assert elapsed < 10
    exit_codes = [o.exit_code for o in outputs if o.stream == pb.ExecOutput.EXIT]
    assert exit_codes == [128 + signal.SIGKILL]
    pids = [int((root / f).read_text()) for f in ("child.pid", "grandchild.pid")]
    assert wait_until(lambda: not any(_alive(p) for p in pids), 5), pids


def test_exec_cancelled_by_client_kills_the_process_group(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with server_thread(root, durable=False) as served:
        stub, channel = stub_for(served.target)
        with channel:
            call = stub.Exec(iter([pb.ExecInput(command=_SPAWN_FAMILY, timeout_seconds=30)]),
                             timeout=30)
            first = next(call)
            assert first.data.startswith(b"started")
            assert wait_until(lambda: (root / "grandchild.pid").exists()
                              and bool((root / "grandchild.pid").read_text().strip()))
            call.cancel()
        pids = [int((root / f).read_text()) for f in ("child.pid", "grandchild.pid")]
        assert wait_until(lambda: not any(_alive(p) for p in pids), 5), pids


# --------------------------------------------------------------------------- refusals

_MUTATING: list[tuple[str, str, str, bool]] = [
    ("Exec", "", "", False), ("WriteFile", "w", "", False), ("WriteRaw", "r", "", False),
    ("Mkdir", "m", "", False), ("Rename", "keep.txt", "renamed", False),
    ("DeleteFile", "keep.txt", "", False), ("ReadFile", "keep.txt", "", False),
    ("ListDir", "", "", True), ("ReadRaw", "keep.txt", "", False), ("Stat", "keep.txt", "", False),
]


def _assert_all_refused(stub: Any, codes: set[grpc.StatusCode]) -> None:
    for op in _MUTATING:
        with pytest.raises(grpc.RpcError) as info:
            run_op(stub, op)
        assert info.value.code() in codes, (op, info.value.code(), info.value.details())


def test_wrong_or_missing_token_refused_and_nothing_done(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "keep.txt").write_bytes(b"keep")
    before = snapshot(root)
    with server_thread(root, durable=False, token="s3cret") as served:
        for token in (None, "wrong", "", "s3cret "):
            stub, channel = stub_for(served.target, token=token)
            with channel:
                _assert_all_refused(stub, {grpc.StatusCode.UNAUTHENTICATED})
        assert snapshot(root) == before  # nothing executed ("exec-mark"), written or renamed
        stub, channel = stub_for(served.target, token="s3cret")
        with channel:
            stub.WriteFile(pb.WriteFileRequest(path="w", content=b"ok"), timeout=10)
    assert (root / "w").read_bytes() == b"ok"


def test_tls_and_mtls_refusals_with_nothing_done(tmp_path: Path) -> None:
    from _certs import make_certs

    certs = make_certs(tmp_path / "certs")
    root = tmp_path / "root"
    root.mkdir()
    (root / "keep.txt").write_bytes(b"keep")
    before = snapshot(root)

    def creds(ca: Path, with_cert: bool) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=ca.read_bytes(),
            private_key=certs.client_key.read_bytes() if with_cert else None,
            certificate_chain=certs.client_cert.read_bytes() if with_cert else None,
        )

    unavailable = {grpc.StatusCode.UNAVAILABLE}
    tls = ServerTLS(cert=certs.server_cert, key=certs.server_key, client_ca=certs.ca)
    with server_thread(root, durable=False, tls=tls) as served:
        for credentials in (creds(certs.other_ca, True),   # wrong CA
                            creds(certs.ca, False),        # no client certificate
                            None):                         # plaintext to a TLS server
            stub, channel = stub_for(served.target, credentials=credentials)
            with channel:
                _assert_all_refused(stub, unavailable)
        assert snapshot(root) == before
        stub, channel = stub_for(served.target, credentials=creds(certs.ca, True))
        with channel:
            stub.WriteFile(pb.WriteFileRequest(path="w", content=b"ok"), timeout=10)
    assert (root / "w").read_bytes() == b"ok"
    # TLS without client certificates required: a client with the right CA is served.
    plain_tls = ServerTLS(cert=certs.server_cert, key=certs.server_key)
    with server_thread(root, durable=False, tls=plain_tls, token="t") as served:
        stub, channel = stub_for(served.target, credentials=creds(certs.ca, False))
        with channel:
            _assert_all_refused(stub, {grpc.StatusCode.UNAUTHENTICATED})  # TLS ok, token not
        stub, channel = stub_for(served.target, credentials=creds(certs.ca, False), token="t")
        with channel:
            stub.Stat(pb.StatRequest(path="keep.txt"), timeout=10)
    assert not (root / "exec-mark").exists()
