"""Fault injection end to end (issue 4): a real server, the fault proxy between it and the
client, server-side hooks, and real processes killed or signalled.

For every fault the promise is checked the same way (:func:`assert_nothing_lost`): the source
is still there, unchanged and not renamed; no file at a final destination path differs from its
source (no partial file); no temporary upload file is left; the failing file is named with a
clear error; nothing hangs (every test runs under ``trio.fail_after``); and a rerun with the
fault removed completes and renames (:func:`assert_migrated`).
"""

# Test set-up and checks touch the local file system directly, on purpose.
# ruff: noqa: ASYNC240

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from faultproxy import DOWN, UP, FaultProxy, open_fault_proxy
from helpers import TEMP_PREFIXES, running, temp_entries, tree_files, wait_until

from memoh_trio import _errors
from memoh_trio._client import connect
from memoh_trio._fs import ServerHooks
from memoh_trio._migrate import migrate
from memoh_trio._report import MigrationReport
from memoh_trio._server import ServerAddress

CHUNK = 64 * 1024
MIGRATED = ".migrated"


# --------------------------------------------------------------------------- trees and checks


def make_tree(src: Path) -> dict[str, bytes]:
    """A mixed tree: one 2 MiB file, several 300 KB files, small ones, an empty file, an empty
    directory and nesting. Returns relative path → content."""
    files: dict[str, bytes] = {"big.bin": os.urandom(2 * 1024 * 1024)}
    for i in range(6):
        files[f"mid/m{i}.bin"] = os.urandom(300_000)
    for i in range(10):
        files[f"small/s{i}.txt"] = f"small file {i}\n".encode() * (i + 1)
    files["empty.txt"] = b""
    files["nested/a/b/c.txt"] = b"deep\n"
    for rel, data in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (src / "emptydir").mkdir()
    return files


def assert_nothing_lost(src: Path, root: Path, files: dict[str, bytes], *,
                        allow_part_files: bool = False) -> None:
    """After a failed run: source intact and not renamed, no partial file at a final path, no
    server temp file (and no client part file unless the connection was gone)."""
    assert src.is_dir(), "the source disappeared"
    assert not Path(str(src) + MIGRATED).exists(), "renamed after a failure"
    assert tree_files(src) == files, "the source was modified"
    for rel, data in tree_files(root).items():
        name = os.path.basename(rel)
        if name.startswith(".memoh-part-") and allow_part_files:
            continue
        assert not name.startswith(TEMP_PREFIXES), f"temporary file left: {rel}"
        assert rel in files, f"unexpected file at the destination: {rel}"
        assert data == files[rel], f"partial or wrong file at a final path: {rel}"
    leftovers = [p for p in temp_entries(root)
                 if not (allow_part_files and ".memoh-part-" in os.path.basename(p))]
    assert leftovers == []


def assert_migrated(report: MigrationReport, src: Path, root: Path,
                    files: dict[str, bytes]) -> None:
    assert report.status == "migrated", report
    assert report.failures == []
    assert not src.exists()
    migrated = Path(str(src) + MIGRATED)
    assert tree_files(migrated) == files
    assert tree_files(root) == files
    assert (root / "emptydir").is_dir()
    assert temp_entries(root) == []


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    src = tmp_path / "bot"
    src.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    return src, root, make_tree(src)


async def run_migrate(target: str, src: Path, **kwargs: Any) -> MigrationReport:
    kwargs.setdefault("concurrency", 4)
    kwargs.setdefault("chunk_size", CHUNK)
    async with connect(target, connect_timeout=5) as client:
        return await migrate(src, client, **kwargs)


def failure_text(report: MigrationReport) -> str:
    return "\n".join(f"{f.path}: {f.error}" for f in report.failures) + (report.error or "")


# --------------------------------------------------------------------------- server hooks


@pytest.mark.parametrize(("fault_errno", "words"), [
    (errno.ENOSPC, "no space left"),
    (errno.EIO, "input/output error"),
    (errno.EDQUOT, "quota"),
])
async def test_nth_write_fails(dirs: tuple[Path, Path, dict[str, bytes]], fault_errno: int,
                               words: str) -> None:
    src, root, files = dirs
    hooks = ServerHooks()
    with trio.fail_after(30):
        async with running(root, hooks=hooks) as addr:
            hooks.fail_write_nth = 5  # a write in the middle of some file
            hooks.fail_errno = fault_errno
            # the fault is in WriteRaw: keep small files on that path too (no tar batches)
            report = await run_migrate(str(addr), src, preserve=False, tar_batches=False)
            assert report.status == "incomplete"
            assert len(report.failures) == 1, report.failures
            failure = report.failures[0]
            assert failure.path in files
            assert words in failure.error.lower(), failure
            assert report.renamed_to is None
            assert_nothing_lost(src, root, files)
            hooks.fail_write_nth = None
            report = await run_migrate(str(addr), src)
            assert_migrated(report, src, root, files)


async def test_every_write_fails_enospc(dirs: tuple[Path, Path, dict[str, bytes]]) -> None:
    """A full disk: every upload fails; each file gets its own error, nothing renamed."""
    src, root, files = dirs

    class Full(ServerHooks):
        def before_write(self, nbytes: int) -> None:
            self.writes += 1
            if self.fail_write_nth is not None:
                raise OSError(errno.ENOSPC, "injected fault: No space left on device")

    hooks = Full(fail_write_nth=1)
    with trio.fail_after(30):
        async with running(root, hooks=hooks) as addr:
            # every WriteRaw fails: keep small files on the WriteRaw path too (no tar batches)
            report = await run_migrate(str(addr), src, preserve=False, tar_batches=False)
            assert report.status == "incomplete"
            non_empty = {rel for rel, data in files.items() if data}
            assert {f.path for f in report.failures} == non_empty
            assert all("no space left" in f.error.lower() for f in report.failures)
            assert_nothing_lost(src, root, files)
            hooks.fail_write_nth = None
            assert_migrated(await run_migrate(str(addr), src), src, root, files)


async def test_server_stops_reading_stall_detection(
        dirs: tuple[Path, Path, dict[str, bytes]]) -> None:
    src, root, files = dirs
    hooks = ServerHooks(stall_after_bytes=100_000)
    with trio.fail_after(30):
        async with running(root, hooks=hooks) as addr:
            report = await run_migrate(str(addr), src, stall_timeout=1.0, preserve=False)
            assert report.status == "incomplete"
            big = {rel for rel, data in files.items() if len(data) >= 100_000}
            assert {f.path for f in report.failures} == big
            assert hooks.stalls >= 1
            for f in report.failures:
                assert "progress" in f.error.lower() or "stall" in f.error.lower(), f
            # The client cancelled the streams; the server discards what it received.
            await wait_until(lambda: not temp_entries(root))
            assert_nothing_lost(src, root, files)
            hooks.stall_after_bytes = None
            assert_migrated(await run_migrate(str(addr), src), src, root, files)


@pytest.mark.slow  # waits out the 60 s default stall timeout; the 1 s variant above runs always
async def test_server_stops_reading_with_default_options_does_not_hang(
        dirs: tuple[Path, Path, dict[str, bytes]]) -> None:
    """The default configuration must detect a stalled stream too (issue 4: "no hang (stall
    detection fires)"): ``migrate()`` without ``stall_timeout`` ends on its own, within its
    default stall timeout plus a margin."""
    import inspect

    default = inspect.signature(migrate).parameters["stall_timeout"].default
    assert default is not None, "migrate() has no default stall timeout: a stalled stream hangs"
    src, root, files = dirs
    hooks = ServerHooks(stall_after_bytes=100_000)
    with trio.fail_after(float(default) * 3 + 10):
        async with running(root, hooks=hooks) as addr:
            report = await run_migrate(str(addr), src, preserve=False)
            assert report.status == "incomplete"
            await wait_until(lambda: not temp_entries(root))
            assert_nothing_lost(src, root, files)


# --------------------------------------------------------------------------- network faults


@asynccontextmanager
async def proxied(root: Path, **kwargs: Any) -> AsyncIterator[tuple[ServerAddress, FaultProxy]]:
    async with running(root, **kwargs) as addr, open_fault_proxy((addr.host, addr.port)) as p:
        yield addr, p


async def test_proxy_delay_still_completes(dirs: tuple[Path, Path, dict[str, bytes]]) -> None:
    src, root, files = dirs
    with trio.fail_after(60):
        async with proxied(root) as (_addr, proxy):
            proxy.delay = 0.01
            report = await run_migrate(proxy.target, src, stall_timeout=5.0)
            assert_migrated(report, src, root, files)


@pytest.mark.parametrize("direction", [UP, DOWN])
async def test_proxy_cut_mid_copy(dirs: tuple[Path, Path, dict[str, bytes]],
                                  direction: str) -> None:
    """The connection dies mid-copy (RST after a byte count): the library raises Unavailable
    promptly (one clear error), nothing is renamed, the server discards its partial uploads,
    and a rerun through a healthy path completes."""
    src, root, files = dirs
    with trio.fail_after(30):
        async with proxied(root) as (_addr, proxy):
            if direction == UP:
                proxy.cut_after(UP, 1_500_000)
            else:
                # Replies are small: cut after a few WriteRaw responses came back.
                proxy.cut_after(DOWN, 600)
            start = trio.current_time()
            with pytest.raises(_errors.Unavailable) as info:
                await run_migrate(proxy.target, src)
            assert trio.current_time() - start < 15
            assert proxy.cuts == 1
            assert str(info.value)
            await wait_until(lambda: not any(".memoh-tmp-" in p for p in temp_entries(root)))
            # The client could not delete a part file through a dead link; nothing is at a
            # final path that differs from its source.
            assert_nothing_lost(src, root, files, allow_part_files=True)
            proxy.clear()
            report = await run_migrate(proxy.target, src)
            assert_migrated(report, src, root, files)


async def test_proxy_stall_mid_copy_stall_detection_fires(
        dirs: tuple[Path, Path, dict[str, bytes]]) -> None:
    """The network path stops forwarding mid-copy: stall detection ends the run (no hang),
    nothing is renamed; once the path recovers (here: the dead connection is cut), nothing
    partial remains and a rerun completes."""
    src, root, files = dirs
    with trio.fail_after(25):
        async with proxied(root) as (_addr, proxy):
            proxy.stall_after(UP, 1_000_000)
            start = trio.current_time()
            try:
                report: MigrationReport | None = await run_migrate(
                    proxy.target, src, stall_timeout=1.0)
            except _errors.MemohError as exc:
                report = None
                assert str(exc)
            elapsed = trio.current_time() - start
            assert proxy.stalled
            if report is not None:
                assert report.status == "incomplete"
                assert report.failures, report
            assert elapsed < 30
            proxy.cut()  # the stalled connection finally dies
            await wait_until(lambda: not any(".memoh-tmp-" in p for p in temp_entries(root)))
            assert_nothing_lost(src, root, files, allow_part_files=True)
            proxy.clear()
            assert_migrated(await run_migrate(proxy.target, src), src, root, files)


async def test_dead_link_with_many_large_files_stops_promptly(tmp_path: Path) -> None:
    """A link that stops forwarding while files stream one at a time: the first stalled stream
    fails that file, and its cleanup gets no answer either, which makes the run stop with
    Unavailable instead of stalling (and cleaning up) once per remaining file (the soak saw a
    run go past 60 s that way; 12 files here would take more than 60 s)."""
    src = tmp_path / "bot"
    root = tmp_path / "root"
    src.mkdir()
    root.mkdir()
    files = {f"big{i:02}.bin": os.urandom(300 * 1024) for i in range(12)}  # not tar-batched
    for name, data in files.items():
        (src / name).write_bytes(data)
    with trio.fail_after(40):
        async with proxied(root) as (_addr, proxy):
            proxy.stall_after(UP, 700_000)
            start = trio.current_time()
            with pytest.raises(_errors.Unavailable, match="no answer from the container"):
                await run_migrate(proxy.target, src, concurrency=1, stall_timeout=0.5)
            elapsed = trio.current_time() - start
            assert elapsed < 20, f"took {elapsed:.1f} s to give up on a dead link"
            proxy.cut()
            await wait_until(lambda: not any(".memoh-tmp-" in p for p in temp_entries(root)))
            assert_nothing_lost(src, root, files, allow_part_files=True)


async def test_proxy_refuses_connections(dirs: tuple[Path, Path, dict[str, bytes]]) -> None:
    src, root, files = dirs
    with trio.fail_after(30):
        async with proxied(root) as (_addr, proxy):
            proxy.refuse = True
            with pytest.raises(_errors.Unavailable):
                await run_migrate(proxy.target, src)
            assert_nothing_lost(src, root, files)
            proxy.clear()
            assert_migrated(await run_migrate(proxy.target, src), src, root, files)


# --------------------------------------------------------------------------- processes


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "memoh_trio", *args]


@asynccontextmanager
async def server_process(root: Path) -> AsyncIterator[tuple[trio.Process, str]]:
    """``memoh-trio serve`` as a child process on a free port; yields (process, target)."""
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(partial(
            trio.run_process, cli("serve", "--root", str(root), "--listen", "127.0.0.1:0",
                                      "--no-auth"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False))
        assert proc.stdout is not None
        line = b""
        with trio.fail_after(15):
            while not line.endswith(b"\n"):
                data = await proc.stdout.receive_some(1)
                assert data, "the server exited before listening"
                line += data
        target = line.decode().strip().rsplit(" ", 1)[-1]
        try:
            yield proc, target
        finally:
            if proc.returncode is None:
                proc.kill()
            nursery.cancel_scope.cancel()


async def migrate_process(src: Path, target: str, *extra: str) -> trio.Process:
    return await trio.lowlevel.open_process(
        cli("migrate", str(src), "--target", target, "--chunk-size", "64KiB",
            "--concurrency", "4", *extra),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def finish(proc: trio.Process, limit: float) -> tuple[int, str]:
    with trio.fail_after(limit):
        code = await proc.wait()
    assert proc.stderr is not None
    err = b""
    with trio.move_on_after(2):
        while data := await proc.stderr.receive_some(65536):
            err += data
    return code, err.decode(errors="replace")


async def test_server_sigkill_mid_copy_then_restart(
        dirs: tuple[Path, Path, dict[str, bytes]]) -> None:
    src, root, files = dirs
    with trio.fail_after(90):
        async with server_process(root) as (server, target), \
                open_fault_proxy(target) as proxy:
            proxy.delay = 0.005  # keep the copy going long enough to kill the server in it
            client = await migrate_process(src, proxy.target)
            await wait_until(lambda: proxy.bytes_up > 500_000)
            server.send_signal(signal.SIGKILL)
            killed_at = trio.current_time()
            code, err = await finish(client, 30)
            assert trio.current_time() - killed_at < 10, "the client did not notice in time"
            assert code != 0, err
            assert code in (1, 3), (code, err)
            assert "error" in err.lower() or "fail" in err.lower(), err
        # A killed server cannot clean up its in-flight uploads (.memoh-tmp-*), and the client
        # cannot delete anything through a dead link: temporaries may remain, but nothing at a
        # final path differs from its source.
        assert src.is_dir() and not Path(str(src) + MIGRATED).exists()
        assert tree_files(src) == files
        for rel, data in tree_files(root).items():
            if not any(part.startswith(TEMP_PREFIXES) for part in rel.split("/")):
                assert data == files[rel], f"partial file at a final path: {rel}"
        async with server_process(root) as (_server, target):
            client = await migrate_process(src, target)
            code, err = await finish(client, 60)
            assert code == 0, err
        assert not src.exists()
        assert tree_files(Path(str(src) + MIGRATED)) == files
        # The rerun also removes what the crash left behind.
        assert temp_entries(root) == []
        assert tree_files(root) == files


@pytest.mark.parametrize(("signum", "expected"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_signal_to_migrate_mid_copy(dirs: tuple[Path, Path, dict[str, bytes]],
                                          signum: int, expected: int) -> None:
    src, root, files = dirs
    with trio.fail_after(60):
        async with running(root) as addr, open_fault_proxy((addr.host, addr.port)) as proxy:
            proxy.delay = 0.005
            client = await migrate_process(src, proxy.target)
            await wait_until(lambda: proxy.bytes_up > 500_000)
            client.send_signal(signum)
            signalled = trio.current_time()
            code, err = await finish(client, 20)
            assert trio.current_time() - signalled < 8, "did not stop within a few seconds"
            assert code == expected, (code, err)
            assert signal.Signals(signum).name in err
            # Its temporary files were deleted best-effort over the live connection.
            await wait_until(lambda: not temp_entries(root))
            assert_nothing_lost(src, root, files)
            proxy.clear()
            client = await migrate_process(src, proxy.target)
            code, err = await finish(client, 60)
            assert code == 0, err
            assert not src.exists()
            assert tree_files(root) == files


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_signal_to_serve_with_in_flight_write_raw(tmp_path: Path, signum: int) -> None:
    root = tmp_path / "root"
    root.mkdir()
    release = trio.Event()

    async def source() -> AsyncIterator[bytes]:
        yield b"x" * 100_000
        await release.wait()
        yield b"never sent"

    with trio.fail_after(30):
        async with server_process(root) as (server, target):
            async with connect(target) as client, trio.open_nursery() as nursery:
                errors: list[BaseException] = []

                async def upload() -> None:
                    try:
                        await client.write_raw("inflight.bin", source())
                    except _errors.MemohError as exc:
                        errors.append(exc)

                nursery.start_soon(upload)
                await wait_until(lambda: bool(temp_entries(root)))
                server.send_signal(signum)
                signalled = trio.current_time()
                with trio.fail_after(15):
                    code = await server.wait()
                assert trio.current_time() - signalled < 10
                assert code in (0, 130, 143), code
                release.set()
            assert errors, "the upload cannot have succeeded"
    assert temp_entries(root) == []
    assert not (root / "inflight.bin").exists()
