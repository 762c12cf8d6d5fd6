"""Trust nothing (issue 11): a source changing under the run, a container that lies, another run
on an alias of the same source. Every test drives the real ``memoh-trio migrate`` process; the
server runs in this process (so its hooks can change the source at a precise moment), as a
grpcio peer, or behind a TCP proxy that watches the bytes going up.
"""
# ruff: noqa: ASYNC240  (tests inspect and change small local trees synchronously, on purpose)

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from faultproxy import open_fault_proxy
from helpers import running as running_addr
from helpers import temp_entries, tree_files, wait_until
from peers import RUN_IN, memoh_go_server, need_container

from memoh_trio._fs import ServerHooks

MIGRATED = ".migrated"
CHUNK = 64 * 1024


# --------------------------------------------------------------------------- helpers


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "memoh_trio", *args]


async def start_migrate(src: Path | str, target: str, *extra: str) -> trio.Process:
    return await trio.lowlevel.open_process(
        cli("migrate", str(src), "--target", target, "--chunk-size", "64KiB", *extra),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def finish(proc: trio.Process, limit: float) -> tuple[int, str]:
    """Wait for ``proc`` (killed, and the test failed, if it outlives ``limit``); return its exit
    code and what it printed."""
    try:
        with trio.fail_after(limit):
            code = await proc.wait()
    except trio.TooSlowError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"memoh-trio migrate did not end within {limit} s (killed)")
    out = b""
    for stream in (proc.stdout, proc.stderr):
        assert stream is not None
        with trio.move_on_after(2):
            while data := await stream.receive_some(65536):
                out += data
    return code, out.decode(errors="replace")


async def run_migrate(src: Path | str, target: str, *extra: str,
                      limit: float = 60) -> tuple[int, str]:
    return await finish(await start_migrate(src, target, *extra), limit)


@asynccontextmanager
async def running(root: Path, **kwargs: Any) -> AsyncIterator[str]:
    """Our server in this process (no token: the client runs without one); yields its target."""
    async with running_addr(root, **kwargs) as addr:
        yield f"{addr.host}:{addr.port}"


class Watcher:
    """A TCP proxy that forwards everything and notes whether ``marker`` ever went up (client
    → server), even split across reads."""

    def __init__(self, upstream: str, marker: bytes) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.marker = marker
        self.seen = False
        self.target = ""

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.target = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream(*self.upstream)
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, server, True, nursery.cancel_scope)
            nursery.start_soon(self._pump, server, client, False, nursery.cancel_scope)

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, up: bool,
                    scope: trio.CancelScope) -> None:
        tail = b""
        keep = len(self.marker) - 1
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await src.receive_some(65536):
                if up:
                    seen = tail + data
                    if self.marker in seen:
                        self.seen = True
                    tail = seen[-keep:]
                await dst.send_all(data)
        scope.cancel()


@asynccontextmanager
async def watching(target: str, marker: bytes) -> AsyncIterator[Watcher]:
    watcher = Watcher(target, marker)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        yield watcher
        nursery.cancel_scope.cancel()


class SwapAt(ServerHooks):
    """Server hook: calls ``swap()`` at the first chunk written, and ``restore()`` once more
    than ``restore_after`` bytes were written (the next file's first chunk)."""

    def __init__(self, swap: Callable[[], None], restore: Callable[[], None] | None = None,
                 restore_after: int = 0) -> None:
        super().__init__()
        self.swap, self.restore, self.restore_after = swap, restore, restore_after
        self.nbytes = 0
        self.restored = False
        self.lock = threading.Lock()

    def before_write(self, nbytes: int) -> None:
        super().before_write(nbytes)
        with self.lock:
            if self.writes == 1:
                self.swap()
            self.nbytes += nbytes
            if (self.restore is not None and not self.restored
                    and self.nbytes > self.restore_after):
                self.restored = True
                self.restore()


def files_in_walk_order(src: Path, sizes: list[int]) -> list[Path]:
    """Create ``len(sizes)`` files and return them in the order the walk (``scandir``) meets
    them, the i-th filled with ``sizes[i]`` random bytes."""
    for i in range(len(sizes)):
        (src / f"f{i}.bin").touch()
    order = [Path(e.path) for e in os.scandir(src)]
    for path, size in zip(order, sizes, strict=True):
        path.write_bytes(os.urandom(size))
    return order


def lock_files(parent: Path) -> list[str]:
    return [n for n in os.listdir(parent) if n.endswith(".memoh-lock")]


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "bots" / "b1"
    src.mkdir(parents=True)
    root = tmp_path / "root"
    root.mkdir()
    return src, root


# --------------------------------------------------------------------------- 1. the source


@pytest.mark.parametrize("put_back", [True, False], ids=["put-back-while-streaming", "left"])
async def test_symlink_swapped_in_after_the_walk_never_sends_the_outside_file(
        dirs: tuple[Path, Path], tmp_path: Path, put_back: bool) -> None:
    """A file replaced, after the walk, by a symlink to a file outside SRC of the same size
    (and put back while it streams): the outside bytes never go up the wire, the file fails,
    nothing is renamed; a rerun copies the real file."""
    src, root = dirs
    size = 3 * CHUNK + 123
    trigger, victim = files_in_walk_order(src, [16 * CHUNK, size])
    original = victim.read_bytes()
    marker = b"OUTSIDE-SECRET-" + os.urandom(8).hex().encode()
    outside = tmp_path / "secret"
    outside.write_bytes((marker * (size // len(marker) + 1))[:size])
    aside = tmp_path / "aside"

    def swap() -> None:
        victim.rename(aside)
        victim.symlink_to(outside)

    def restore() -> None:
        victim.unlink()
        aside.rename(victim)

    hooks = SwapAt(swap, restore if put_back else None, restore_after=16 * CHUNK)
    with trio.fail_after(60):
        async with running(root, hooks=hooks) as target, watching(target, marker) as watcher:
            code, out = await run_migrate(src, watcher.target, "--concurrency", "1",
                                          "--no-tar-batches")
            assert not watcher.seen, "the outside file's bytes went over the wire"
            assert code == 1, (code, out)
            assert "symlink" in out, out
            assert src.is_dir() and not Path(f"{src}{MIGRATED}").exists()
            assert marker not in (root / victim.name).read_bytes() \
                if (root / victim.name).exists() else True
            assert temp_entries(root) == []
            # The rerun copies the real file (put back by the test if the hook did not).
            if victim.is_symlink():
                restore()
            code, out = await run_migrate(src, watcher.target)
            assert code == 0, out
            assert not watcher.seen
    assert (root / victim.name).read_bytes() == original
    assert (root / trigger.name).read_bytes() == Path(f"{src}{MIGRATED}", trigger.name).read_bytes()


async def test_fifo_swapped_in_after_the_walk_fails_the_file_and_ends(
        dirs: tuple[Path, Path], tmp_path: Path) -> None:
    """A file replaced by a FIFO after the walk: the run ends on its own (no open waits for a
    writer), the file fails, exit 1, the lock is released and a rerun copies the file."""
    src, root = dirs
    _trigger, victim = files_in_walk_order(src, [4 * CHUNK, 2 * CHUNK])
    original = victim.read_bytes()
    aside = tmp_path / "aside"

    def swap() -> None:
        victim.rename(aside)
        os.mkfifo(victim)

    with trio.fail_after(60):
        async with running(root, hooks=SwapAt(swap)) as target:
            code, out = await run_migrate(src, target, "--concurrency", "1",
                                          "--no-tar-batches", limit=20)
            assert code == 1, (code, out)
            assert "FIFO" in out, out
            assert src.is_dir() and not Path(f"{src}{MIGRATED}").exists()
            assert lock_files(src.parent) == []  # released (and removed)
            assert not (root / victim.name).exists()
            victim.unlink()
            aside.rename(victim)
            code, out = await run_migrate(src, target, limit=30)
            assert code == 0, out
    assert (root / victim.name).read_bytes() == original


# --------------------------------------------------------------------------- 2. cancellation


@pytest.mark.parametrize(("signum", "expected"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
async def test_signal_ends_the_run_when_a_source_turned_into_a_fifo(
        dirs: tuple[Path, Path], tmp_path: Path, signum: int, expected: int) -> None:
    """A FIFO swapped in after the walk used to block a worker thread in ``open`` for ever,
    and the process then ignored SIGTERM/SIGINT. Now the signal ends it within seconds with
    its exit code, the lock released, nothing renamed, no temporary file left."""
    src, root = dirs
    trigger, victim, _slow = files_in_walk_order(src, [4 * CHUNK, 2 * CHUNK, 256 * CHUNK])
    aside = tmp_path / "aside"

    def swap() -> None:
        victim.rename(aside)
        os.mkfifo(victim)

    hooks = SwapAt(swap)
    with trio.fail_after(60):
        async with running(root, hooks=hooks) as target, \
                open_fault_proxy(target) as proxy:
            proxy.delay = 0.02  # the last file streams for seconds
            proc = await start_migrate(src, proxy.target, "--concurrency", "1",
                                       "--no-tar-batches")
            size = trigger.stat().st_size
            await wait_until(lambda: hooks.nbytes >= size)
            await trio.sleep(1.0)  # the victim's turn has come
            proc.send_signal(signum)
            sent = trio.current_time()
            code, out = await finish(proc, 15)
            assert trio.current_time() - sent < 8, "did not stop within a few seconds"
            assert code == expected, (code, out)
        assert src.is_dir() and not Path(f"{src}{MIGRATED}").exists()
        assert lock_files(src.parent) == []
        assert temp_entries(root) == []


# --------------------------------------------------------------------------- 3. verification


@pytest.fixture
def lying_grpcio(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A grpcio peer whose WriteRaw drops the last 1000 bytes of every upload but reports every
    byte it received as written."""
    from benchmarks.grpcio_peer import load_stubs, make_servicer, start_grpcio_server

    pb2, _ = load_stubs()
    root = tmp_path / "grpcio-root"
    root.mkdir()

    class Truncating:
        def __init__(self) -> None:
            self.inner: Any = make_servicer(root)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def WriteRaw(self, request_iterator: Any, context: Any) -> Any:
            received = 0

            def cut() -> Iterator[Any]:
                nonlocal received
                pending = None
                for chunk in request_iterator:
                    received += len(chunk.data)
                    if pending is not None:
                        yield pending
                    pending = chunk
                if pending is not None:
                    pending.data = pending.data[:-1000] if len(pending.data) > 1000 else b""
                    yield pending

            self.inner.WriteRaw(cut(), context)
            return pb2.WriteRawResponse(bytes_written=received)

    server, port = start_grpcio_server(root, servicer=Truncating())
    try:
        yield f"127.0.0.1:{port}", root
    finally:
        server.stop(None)


async def test_container_that_truncates_but_reports_every_byte_fails_the_file(
        dirs: tuple[Path, Path], lying_grpcio: tuple[str, Path]) -> None:
    src, _ = dirs
    target, root = lying_grpcio
    (src / "big.bin").write_bytes(os.urandom(1024 * 1024))
    code, out = await run_migrate(src, target)
    assert code == 1, out
    # the container's Stat of the temporary file, or the agent's fstat of it
    assert "big.bin" in out and ("container holds" in out or ("verification failed" in out \
                                 and "has 1047576 bytes, not 1048576" in out)), out
    assert src.is_dir() and not Path(f"{src}{MIGRATED}").exists()
    assert not (root / "big.bin").exists()  # never moved into place


@asynccontextmanager
async def server_of(kind: str, root: Path) -> AsyncIterator[str]:
    """Our server in this process, or Memoh's Go server as a child process; yields a target."""
    if kind == "memoh-go":
        async with memoh_go_server(root) as peer:
            yield peer.target
    else:
        async with running(root) as target:
            yield target


@pytest.mark.parametrize("kind", ["memoh-trio",
                                  pytest.param("memoh-go", marks=pytest.mark.memoh_go)])
async def test_verify_sha256_rechecks_files_resume_would_skip(dirs: tuple[Path, Path],
                                                              kind: str) -> None:
    """A corrupt same-size, same-mtime copy left by an earlier run is found by ``--verify
    sha256`` (hashed in the container, compared with the source) and sent again."""
    src, root = dirs
    files = {"big.bin": os.urandom(600_000), "small/a.txt": b"hello\n" * 50,
             "small/b.txt": os.urandom(3000)}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    with trio.fail_after(60):
        async with server_of(kind, root) as target:
            code, out = await run_migrate(src, target, "--no-rename")
            assert code == 0, out
            assert tree_files(root) == files
            for rel in ("big.bin", "small/a.txt"):  # same size, same mtime, other bytes
                dest = root / rel
                st = dest.stat()
                dest.write_bytes(bytes(b ^ 0xFF for b in files[rel][:100]) + files[rel][100:])
                os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
            code, out = await run_migrate(src, target, "--verify", "sha256", "--json")
            assert code == 0, out
            report = json.JSONDecoder().raw_decode(out[out.index("{"):])[0]
            # The untouched file is vouched for by its hash; the two corrupt ones are sent again.
            assert (report["unchanged"], report["files"]) == (1, 2), report
    assert tree_files(root) == files
    assert tree_files(Path(f"{src}{MIGRATED}")) == files


# --------------------------------------------------------------------------- 4. SRC and the lock


async def test_migrate_through_an_alias_meets_the_same_lock(dirs: tuple[Path, Path]) -> None:
    """``migrate src`` and ``migrate alias`` (alias -> src) at once: the second exits 5 and
    touches nothing of the first, which completes and renames the real directory."""
    src, root = dirs
    files = {f"f{i}.bin": os.urandom(300_000) for i in range(8)}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    alias = src.parent / "alias"
    alias.symlink_to(src)
    with trio.fail_after(90):
        async with running(root) as target, \
                open_fault_proxy(target) as proxy:
            proxy.stall_after("up", 200_000)  # the first run holds the lock until resumed
            first = await start_migrate(src, proxy.target, "--concurrency", "2",
                                        "--no-tar-batches")
            await wait_until(lambda: proxy.stalled)
            code, out = await run_migrate(alias, target, limit=20)
            assert code == 5, (code, out)
            assert "another migration" in out, out
            proxy.clear()  # resumes
            code, out = await finish(first, 60)
            assert code == 0, out
    assert not src.exists() and tree_files(Path(f"{src}{MIGRATED}")) == files
    assert tree_files(root) == files
    assert alias.is_symlink()  # the alias itself is left alone (now dangling)
    assert lock_files(src.parent) == []


async def test_symlinked_src_renames_the_real_directory(dirs: tuple[Path, Path]) -> None:
    src, root = dirs
    (src / "a.txt").write_bytes(b"a\n")
    alias = src.parent / "alias"
    alias.symlink_to(src.name)
    async with running(root) as target:
        code, out = await run_migrate(alias, target)
    assert code == 0, out
    assert not src.exists() and (src.parent / f"b1{MIGRATED}" / "a.txt").read_bytes() == b"a\n"
    assert alias.is_symlink() and os.readlink(alias) == src.name
    assert not (src.parent / f"alias{MIGRATED}").exists()


async def test_lock_file_is_removed_and_dry_run_takes_no_lock(dirs: tuple[Path, Path]) -> None:
    """No lock file is left after a run; ``--dry-run`` runs even while a migration holds the
    lock (it changes nothing) and creates no lock file."""
    src, root = dirs
    for i in range(6):
        (src / f"f{i}.bin").write_bytes(os.urandom(300_000))
    with trio.fail_after(90):
        async with running(root) as target, \
                open_fault_proxy(target) as proxy:
            code, out = await run_migrate(src, target, "--dry-run")
            assert code == 0, out
            assert lock_files(src.parent) == []
            proxy.stall_after("up", 200_000)  # the first run holds the lock until resumed
            first = await start_migrate(src, proxy.target, "--concurrency", "1",
                                        "--no-tar-batches")
            await wait_until(lambda: proxy.stalled)
            assert len(lock_files(src.parent)) == 1
            code, out = await run_migrate(src, target, "--dry-run", limit=20)
            assert code == 0, (code, out)
            proxy.clear()  # resumes
            code, out = await finish(first, 60)
            assert code == 0, out
    assert lock_files(src.parent) == []


# --------------------------------------------------------------------------- pure helpers


def _identity(path: Path) -> Any:
    from memoh_trio._plan import WalkEntry, classify

    return classify(WalkEntry(path.name, str(path), st=os.lstat(path)))


def test_identity_error_names_what_changed(tmp_path: Path) -> None:
    from memoh_trio._source import identity_error

    f = tmp_path / "f"
    f.write_bytes(b"x" * 10)
    want = _identity(f)
    assert want.ino == f.stat().st_ino and want.dev == f.stat().st_dev
    assert identity_error(os.lstat(f), want) is None
    g = tmp_path / "g"
    g.write_bytes(b"y" * 10)
    os.utime(g, ns=(want.mtime_ns, want.mtime_ns))
    assert "another file" in (identity_error(os.lstat(g), want) or "")
    f.write_bytes(b"x" * 11)
    assert "size 10 -> 11" in (identity_error(os.lstat(f), want) or "")
    f.write_bytes(b"z" * 10)
    os.utime(f, ns=(want.mtime_ns + 1, want.mtime_ns + 1))
    assert "modified" in (identity_error(os.lstat(f), want) or "")
    os.mkfifo(tmp_path / "p")
    assert "FIFO" in (identity_error(os.lstat(tmp_path / "p"), want) or "")


def test_open_source_refuses_links_and_fifos_without_blocking(tmp_path: Path) -> None:
    from memoh_trio._source import SourceChanged, open_source, read_whole, sha256_file

    f = tmp_path / "f"
    f.write_bytes(b"data")
    want = _identity(f)
    assert read_whole(want) == b"data"
    assert sha256_file(want) == __import__("hashlib").sha256(b"data").hexdigest()
    f.rename(tmp_path / "aside")
    f.symlink_to(tmp_path / "aside")  # the same inode behind a link: still refused
    with pytest.raises(SourceChanged, match="symlink"):
        open_source(want)
    f.unlink()
    os.mkfifo(f)
    with pytest.raises(SourceChanged, match="FIFO"):  # returns at once: no writer needed
        open_source(want)


@pytest.mark.parametrize("kind", ["dash", "busybox", "gnu-nopython"])
def test_sha256_many_in_a_real_shell(tmp_path: Path, kind: str) -> None:
    """The batched hash script under the shells containers have (busybox: ``run-in.sh``)."""
    import hashlib

    from memoh_trio._scripts import parse_sha256_many, sha256_many

    names = ["a.txt", "sub dir/b'c.txt", "-rf", "missing", "ü.bin"]
    for name in names[:3] + names[4:]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(name.encode() * 3)
    script, stdin = sha256_many(names)
    argv = ["/bin/sh", "-c", script]
    if kind != "dash":
        need_container(kind)
        argv = ["bash", str(RUN_IN), kind, *argv]
    res = subprocess.run(argv, cwd=tmp_path, input=stdin, capture_output=True, check=False,
                         timeout=120)
    assert res.returncode == 0
    got = parse_sha256_many(res.stdout)
    assert got == {n: hashlib.sha256(n.encode() * 3).hexdigest()
                   for n in names if n != "missing"}
    assert parse_sha256_many(b"") == {} and parse_sha256_many(b"junk\n") == {}


async def test_dry_run_on_a_read_only_data_root(dirs: tuple[Path, Path]) -> None:
    """``--dry-run`` takes no lock, so it works where the lock file cannot be created: the data
    root bind-mounted read-only (in a private mount namespace: needs root and ``unshare``)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and util-linux unshare for a read-only bind mount")
    src, root = dirs
    (src / "a.txt").write_bytes(b"a\n")
    data = src.parent
    async with running(root) as target:
        script = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && '
                  'exec "$@"')
        with trio.fail_after(60):
            done = await trio.run_process(
                ["unshare", "-m", "sh", "-c", script, "sh", str(data),
                 *cli("migrate", str(src), "--target", target, "--dry-run")],
                capture_stdout=True, capture_stderr=True, check=False)
    out = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, out
    assert src.is_dir() and lock_files(data) == [] and not (root / "a.txt").exists()


LEASE_HOLDER = """
import fcntl, os, signal, sys
signal.signal(signal.SIGIO, signal.SIG_IGN)  # the lease-break notice
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.fcntl(fd, 1024, fcntl.F_WRLCK)  # F_SETLEASE: opens by others block until it is broken
print("leased", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("size", [3000, 600_000], ids=["tar-batch", "stream"])
async def test_file_under_a_lease_is_not_waited_for(dirs: tuple[Path, Path], size: int) -> None:
    """A source file under another process's write lease: a blocking open would wait for the
    lease to be broken (``/proc/sys/fs/lease-break-time``, 45 s by default). The run does not
    wait: that file fails at once, exit 1; a rerun once the lease is gone copies it."""
    if Path("/proc/sys/fs/leases-enable").read_text().strip() != "1":
        pytest.skip("file leases are disabled on this host")
    src, root = dirs
    leased = src / "leased.bin"
    leased.write_bytes(os.urandom(size))
    (src / "other.txt").write_bytes(b"other\n")
    holder = await trio.lowlevel.open_process(
        [sys.executable, "-c", LEASE_HOLDER, str(leased)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        with trio.fail_after(10):
            assert (await holder.stdout.receive_some()).startswith(b"leased")
        async with running(root) as target:
            code, out = await run_migrate(src, target, limit=20)
            assert code == 1, (code, out)
            assert "lease" in out, out
            assert src.is_dir() and not (root / "leased.bin").exists()
            await holder.stdin.aclose()
            with trio.fail_after(10):
                await holder.wait()
            code, out = await run_migrate(src, target)
            assert code == 0, out
    finally:
        with contextlib.suppress(ProcessLookupError):
            holder.kill()
        await holder.wait()
    assert tree_files(root) == tree_files(Path(f"{src}{MIGRATED}"))


@pytest.mark.parametrize(("signum", "expected"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
async def test_signal_ends_the_run_while_a_read_hangs(tmp_path: Path, signum: int,
                                                      expected: int) -> None:
    """SRC on a hung filesystem (a FUSE filesystem whose reads are never answered, like a dead
    NFS server): a worker thread is stuck in the kernel reading the file. SIGTERM/SIGINT still
    end the process within seconds, with its exit code, nothing renamed, the lock released."""
    from hangfs import HangFS

    src = tmp_path / "bots" / "b1"
    src.mkdir(parents=True)
    root = tmp_path / "root"
    root.mkdir()
    try:
        fs = HangFS(str(src), "data.bin", 600_000)
    except OSError as exc:
        pytest.skip(f"cannot mount a FUSE filesystem here (needs root and /dev/fuse): {exc}")
    try:
        async with running(root) as target:
            proc = await start_migrate(src, target, "--no-tar-batches")
            await wait_until(lambda: fs.reads > 0)  # a thread is now blocked in read()
            await trio.sleep(0.5)
            proc.send_signal(signum)
            sent = trio.current_time()
            code, out = await finish(proc, 20)
            assert trio.current_time() - sent < 8, "did not stop within a few seconds"
            assert code == expected, (code, out)
        assert lock_files(src.parent) == []
        assert not Path(f"{src}{MIGRATED}").exists()
        assert temp_entries(root) == []
    finally:
        fs.close()
