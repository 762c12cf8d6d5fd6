"""The migrator against real servers: the trio server, and grpcio writing in place like the seed.

Covers every classification row, resume, preserve, single flight, fatal connection loss,
migrate_bot / migrate_all, and the guarantee as a hypothesis property:
random tree, failure at a random chunk, cancellation at a random moment
⇒ renamed ⇔ every file present and identical; never a partial file at a final path; no temporary
file left; the source tree never modified.
"""
# ruff: noqa: ASYNC230, ASYNC240  (tests inspect small local trees synchronously, on purpose)

from __future__ import annotations

import functools
import math
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import unprivileged
from helpers import PythonFirst, is_place
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.grpcio_peer import make_servicer, start_grpcio_server
from memoh_trio import _scripts, _walk
from memoh_trio._client import connect
from memoh_trio._errors import ConfigError, MigrationBusy, SourceError, Unavailable
from memoh_trio._lock import single_flight
from memoh_trio._migrate import (
    MIGRATED_SUFFIX,
    PART_PREFIX,
    list_bots,
    migrate,
    migrate_all,
    migrate_bot,
    place,
)
from memoh_trio._migrate import meta as migrate_meta
from memoh_trio._pool import Pool
from memoh_trio._progress import Progress
from memoh_trio._scripts.flush import flush_command
from memoh_trio._server import ServerHooks
from memoh_trio._server import serve as _serve
from memoh_trio._tarbatch import TAR_PREFIX

#: The tests' clients carry no token: their in-process servers run unauthenticated, explicitly.
serve = functools.partial(_serve, allow_unauthenticated=True)

CHUNK = 4096  # small chunks: several per file, so faults land mid-file

# --------------------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything the migrator must leave untouched in a source tree (and its dest comparison)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            s = os.lstat(full)
            if stat.S_ISREG(s.st_mode):
                with open(full, "rb") as f:
                    body: Any = f.read()
            elif stat.S_ISLNK(s.st_mode):
                body = os.readlink(full)
            else:
                body = None
            out[rel] = (stat.S_IFMT(s.st_mode), stat.S_IMODE(s.st_mode), s.st_mtime_ns, body)
    return out


def content_view(snap: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    """Type + content only (what 'identical at the destination' means without preserve)."""
    return {k: (v[0], v[3]) for k, v in snap.items() if v[0] in (stat.S_IFREG, stat.S_IFLNK)
            or v[0] == stat.S_IFDIR}


def temp_files(root: Path) -> list[str]:
    return [
        os.path.join(d, n) for d, dirs, files in os.walk(root) for n in files + dirs
        if n.startswith((PART_PREFIX, ".memoh-tmp-", TAR_PREFIX))
    ]


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


@dataclass
class Target:
    kind: str
    root: Path
    address: str
    hooks: ServerHooks | None


@pytest.fixture(params=["trio", "grpcio"])
async def target(request: pytest.FixtureRequest, tmp_path: Path,
                 nursery: trio.Nursery) -> AsyncIterator[Target]:
    root = tmp_path / "container"
    root.mkdir()
    if request.param == "trio":
        hooks = ServerHooks()
        addr = await nursery.start(functools.partial(serve, root, hooks=hooks))
        yield Target("trio", root, str(addr), hooks)
        return
    server, port = start_grpcio_server(root, max_workers=32)
    try:
        yield Target("grpcio", root, f"127.0.0.1:{port}", None)
    finally:
        server.stop(grace=None)


@pytest.fixture
async def trio_target(tmp_path: Path, nursery: trio.Nursery) -> Target:
    """memoh-trio's server only: it has the fault-injection hooks the grpcio peer lacks."""
    root = tmp_path / "container"
    root.mkdir()
    hooks = ServerHooks()
    addr = await nursery.start(functools.partial(serve, root, hooks=hooks))
    return Target("trio", root, str(addr), hooks)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "bots" / "bot1"
    path.mkdir(parents=True)
    return path


# --------------------------------------------------------------------------- classification


async def test_every_classification_row(target: Target, src: Path) -> None:
    write_tree(src, {"a/b/c.bin": os.urandom(3 * CHUNK + 17), "top.txt": b"hello",
                     "a/other": b"x" * CHUNK})
    (src / "empty.txt").touch()
    (src / "a" / "emptydir").mkdir()
    (src / "deep" / "er" / "empty").mkdir(parents=True)
    (src / "rel-link").symlink_to("a/b/c.bin")
    (src / "abs-link").symlink_to("/etc/passwd")
    (src / "dangling").symlink_to("no/such/file")
    (src / "dirlink").symlink_to("a")
    os.mkfifo(src / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock"))
    before = snapshot(src)

    progress = Progress()
    with trio.fail_after(20):  # a FIFO opened by mistake would hang here
        async with connect(target.address, chunk_size=CHUNK) as client:
            report = await migrate(src, client, progress=progress)
    sock.close()

    assert report.status == "migrated", report
    assert report.renamed_to == str(src) + MIGRATED_SUFFIX
    assert not src.exists()
    moved = Path(report.renamed_to)
    after = snapshot(moved)
    assert after == before  # the source itself was never modified

    dest = snapshot(target.root)
    expected = {k: v for k, v in content_view(before).items() if k not in ("pipe", "sock")}
    assert content_view(dest) == expected
    assert os.readlink(target.root / "abs-link") == "/etc/passwd"  # never followed
    assert (target.root / "empty.txt").stat().st_size == 0
    assert (target.root / "deep" / "er" / "empty").is_dir()
    assert {s.path for s in report.skipped} == {"pipe", "sock"}
    assert all(s.reason for s in report.skipped)
    assert (report.files, report.symlinks, report.dirs) == (4, 4, 2)
    assert report.bytes == 3 * CHUNK + 17 + 5 + CHUNK
    state = progress.state
    assert state.finished and state.files_done == state.files_total == 4
    assert state.bytes_done == state.bytes_total == report.bytes
    assert temp_files(target.root) == []


async def test_non_utf8_name_fails_and_blocks_rename(target: Target, src: Path) -> None:
    write_tree(src, {"good.txt": b"good"})
    with open(os.fsencode(str(src)) + b"/bad-\xff", "wb") as f:
        f.write(b"data")
    async with connect(target.address) as client:
        report = await migrate(src, client)
    assert report.status == "incomplete" and not report.ok
    assert report.renamed_to is None and src.is_dir()
    assert [f.path for f in report.failures] == ["bad-\\xff"]
    assert "UTF-8" in report.failures[0].error
    assert report.error is not None and "1 entry failed" in report.error
    assert (target.root / "good.txt").read_bytes() == b"good"


@unprivileged
async def test_unreadable_entries_fail(target: Target, src: Path) -> None:
    write_tree(src, {"ok": b"1", "locked/inner": b"2", "secret": b"3"})
    (src / "locked").chmod(0)
    (src / "secret").chmod(0)
    try:
        async with connect(target.address) as client:
            report = await migrate(src, client)
    finally:
        (src / "locked").chmod(0o755)
    assert report.status == "incomplete"
    assert {f.path for f in report.failures} == {"locked", "secret"}
    assert src.is_dir()


async def test_server_write_failure_is_a_clear_per_file_error(
    trio_target: Target, src: Path
) -> None:
    target = trio_target
    assert target.hooks is not None
    write_tree(src, {f"f{i}": os.urandom(2 * CHUNK) for i in range(4)})
    target.hooks.fail_write_nth = 3
    async with connect(target.address, chunk_size=CHUNK) as client:
        report = await migrate(src, client, tar_batches=False)  # the fault is in WriteRaw
    assert report.status == "incomplete" and src.is_dir()
    assert len(report.failures) == 1
    assert "space" in report.failures[0].error.lower()
    assert temp_files(target.root) == []
    failed = target.root / report.failures[0].path
    assert not failed.exists()  # never a partial file at the final path
    # a rerun with the fault gone completes, resending only the failed file
    writes_before = target.hooks.writes
    async with connect(target.address, chunk_size=CHUNK) as client:
        report2 = await migrate(src, client, tar_batches=False)
    assert report2.status == "migrated"
    assert report2.unchanged == 3 and report2.files == 1
    assert target.hooks.writes - writes_before == 2  # one file of two chunks
    assert content_view(snapshot(target.root)) == content_view(snapshot(Path(report2.renamed_to
                                                                               or "")))


async def test_file_growing_between_walk_and_copy_fails(target: Target, src: Path) -> None:
    write_tree(src, {"grows": b"a" * CHUNK})
    path = src / "grows"
    progress = Progress()

    async def grow_when_found() -> None:
        await progress.value.wait_value(lambda s: s.files_total >= 1)
        with path.open("ab") as f:
            f.write(b"more")

    async with connect(target.address, chunk_size=CHUNK) as client, trio.open_nursery() as n:
        n.start_soon(grow_when_found)
        report = await migrate(src, client, progress=progress)
    if report.status == "migrated":  # the growth landed before the walk's lstat: copied whole
        moved = Path(str(src) + MIGRATED_SUFFIX) / "grows"
        assert (target.root / "grows").read_bytes() == moved.read_bytes()
        return
    assert "changed" in report.failures[0].error or "size" in report.failures[0].error
    assert not (target.root / "grows").exists()
    assert temp_files(target.root) == []


# --------------------------------------------------------------------------- resume / preserve


async def test_resume_skips_unchanged_files(target: Target, src: Path) -> None:
    write_tree(src, {"a": b"1" * 100, "d/b": b"2" * 200, "c": b"3"})
    async with connect(target.address) as client:
        first = await migrate(src, client, rename=False)
        assert first.status == "migrated" and first.renamed_to is None and src.is_dir()
        assert first.files == 3
        (src / "c").write_bytes(b"changed")  # size differs → resent
        second = await migrate(src, client)
    assert second.unchanged == 2 and second.files == 1
    assert second.status == "migrated"
    assert (target.root / "c").read_bytes() == b"changed"


@pytest.mark.parametrize("shell_max", [0, migrate_meta.SHELL_META_MAX], ids=["python3", "shell"])
async def test_preserve_modes_and_mtimes(target: Target, src: Path, shell_max: int,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Small batches go through the shell, larger ones through one python3: same result."""
    monkeypatch.setattr(migrate_meta, "SHELL_META_MAX", shell_max)
    write_tree(src, {"x/run.sh": b"#!/bin/sh\n", "x/private": b"p", "pub": b"q"})
    (src / "emptyd").mkdir()
    (src / "x" / "run.sh").chmod(0o751)
    (src / "x" / "private").chmod(0o600)
    (src / "emptyd").chmod(0o700)
    for i, rel in enumerate(["x/run.sh", "x/private", "pub", "emptyd", "x"]):
        os.utime(src / rel, ns=(1, 1_600_000_000_123_456_789 + i * 10**9))
    before = snapshot(src)
    async with connect(target.address) as client:
        report = await migrate(src, client)
    assert report.status == "migrated"
    dest = snapshot(target.root)
    for rel in ["x/run.sh", "x/private", "pub", "emptyd", "x"]:
        assert dest[rel][1] == before[rel][1], rel  # permission bits
        assert dest[rel][2] == before[rel][2], rel  # mtime, to the nanosecond


async def test_preserve_with_shell_only(target: Target, src: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Containers without python3: chmod + touch per entry, batched in one shell script."""
    monkeypatch.setattr(migrate_meta, "USE_PYTHON_META", False)
    write_tree(src, {"d/-dash": b"1", "d/sp ace": b"2", "d/new\nline": b"3", "d/quo'te": b"4"})
    for i, rel in enumerate(["d/-dash", "d/sp ace", "d/new\nline", "d/quo'te", "d"]):
        (src / rel).chmod(0o640 if i % 2 else 0o755)
        os.utime(src / rel, ns=(1, 1_500_000_000_000_000_007 + i * 10**9))
    before = snapshot(src)
    async with connect(target.address) as client:
        report = await migrate(src, client)
    assert report.status == "migrated", report.failures
    dest = snapshot(target.root)
    for rel, v in before.items():
        assert dest[rel][1:3] == v[1:3], rel


async def test_stalled_stream_fails_that_file(src: Path, tmp_path: Path,
                                              nursery: trio.Nursery) -> None:
    root = tmp_path / "c"
    root.mkdir()
    write_tree(src, {"big": os.urandom(64 * CHUNK)})
    hooks = ServerHooks(stall_after_bytes=2 * CHUNK)
    addr = await nursery.start(functools.partial(serve, root, hooks=hooks))
    with trio.fail_after(15):
        async with connect(str(addr), chunk_size=CHUNK) as client:
            report = await migrate(src, client, stall_timeout=0.5, tar_batches=False)
    assert report.status == "incomplete" and src.is_dir()
    assert "no progress" in report.failures[0].error
    assert hooks.stalls == 1
    assert not (root / "big").exists()


async def test_no_preserve_leaves_server_defaults(target: Target, src: Path) -> None:
    write_tree(src, {"f": b"x"})
    (src / "f").chmod(0o751)
    os.utime(src / "f", ns=(1, 1_000_000_000))
    async with connect(target.address) as client:
        report = await migrate(src, client, preserve=False)
    assert report.status == "migrated"
    assert (target.root / "f").stat().st_mtime_ns != 1_000_000_000


async def test_dest_subdirectory(target: Target, src: Path) -> None:
    write_tree(src, {"a/b": b"x"})
    (src / "e").mkdir()
    async with connect(target.address) as client:
        report = await migrate(src, client, dest="data//bot1/", verify="sha256")
    assert report.status == "migrated" and report.dest == "data/bot1"
    assert (target.root / "data" / "bot1" / "a" / "b").read_bytes() == b"x"
    assert (target.root / "data" / "bot1" / "e").is_dir()


async def test_sha256_verify(target: Target, src: Path) -> None:
    write_tree(src, {f"f{i}": os.urandom(i * 1000) for i in range(5)})
    async with connect(target.address, chunk_size=CHUNK) as client:
        report = await migrate(src, client, verify="sha256", concurrency=2)
    assert report.status == "migrated" and report.files == 5


async def test_dry_run_copies_nothing(target: Target, src: Path) -> None:
    write_tree(src, {"a": b"1", "b/c": b"22"})
    async with connect(target.address) as client:
        report = await migrate(src, client, dry_run=True)
    assert report.status == "dry-run" and report.ok
    assert (report.files, report.bytes) == (2, 3)
    assert list(target.root.iterdir()) == [] and src.is_dir()


# --------------------------------------------------------------------------- errors, lock


async def test_bad_source_and_options(target: Target, tmp_path: Path, src: Path) -> None:
    async with connect(target.address) as client:
        with pytest.raises(SourceError, match="does not exist"):
            await migrate(tmp_path / "nope", client)
        (tmp_path / "file").write_text("x")
        with pytest.raises(SourceError, match="not a directory"):
            await migrate(tmp_path / "file", client)
        with pytest.raises(ConfigError, match="concurrency"):
            await migrate(src, client, concurrency=0)
        with pytest.raises(ConfigError, match="verify"):
            await migrate(src, client, verify="md5")  # type: ignore[arg-type]
    assert src.is_dir()


async def test_single_flight(target: Target, src: Path) -> None:
    write_tree(src, {"a": b"1"})
    async with connect(target.address) as client:
        async with single_flight(src):
            with pytest.raises(MigrationBusy, match="another migration"):
                await migrate(src, client)
        # two runs at once with waiting: one migrates, the other finds it already done
        reports = []

        async def run() -> None:
            reports.append(await migrate(src, client, lock_wait=math.inf))

        async with trio.open_nursery() as n:
            n.start_soon(run)
            n.start_soon(run)
    assert sorted(r.status for r in reports) == ["already-migrated", "migrated"]


async def test_connection_loss_is_one_fatal_error(src: Path, tmp_path: Path) -> None:
    root = tmp_path / "c"
    root.mkdir()
    write_tree(src, {f"f{i:03}": os.urandom(8 * CHUNK) for i in range(40)})
    hooks = ServerHooks(stall_after_bytes=6 * CHUNK)  # streams hang until the server dies
    progress = Progress()
    async with trio.open_nursery() as outer:
        server_scope = trio.CancelScope()

        async def run_server(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            with server_scope:
                await serve(root, hooks=hooks, task_status=task_status)

        addr = await outer.start(run_server)

        async def kill_server() -> None:
            await progress.value.wait_value(lambda s: s.bytes_done >= 4 * CHUNK)
            server_scope.cancel()

        outer.start_soon(kill_server)
        with trio.fail_after(15):
            async with connect(str(addr), chunk_size=CHUNK) as client:
                with pytest.raises(Unavailable, match="lost the connection"):
                    await migrate(src, client, progress=progress, concurrency=4)
    assert src.is_dir() and not Path(str(src) + MIGRATED_SUFFIX).exists()


async def test_cancel_never_renames_and_cleans_up(target: Target, src: Path) -> None:
    write_tree(src, {f"f{i:03}": os.urandom(16 * CHUNK) for i in range(30)})
    progress = Progress()
    async with connect(target.address, chunk_size=CHUNK) as client, trio.open_nursery() as n:
        async def cancel_mid_copy() -> None:
            await progress.value.wait_value(lambda s: s.bytes_done > 20 * CHUNK)
            n.cancel_scope.cancel()

        n.start_soon(cancel_mid_copy)
        await migrate(src, client, progress=progress)
        pytest.fail("migrate finished before the cancellation")  # pragma: no cover
    assert src.is_dir()
    assert temp_files(target.root) == []
    for f in target.root.iterdir():  # never a partial file at a final path
        assert f.read_bytes() == (src / f.name).read_bytes()


class _LateAfterCancel:
    """A real client whose ``name`` calls that ``hold(first argument)`` picks never answer;
    once cancelled, ``late(first argument)`` runs 0.1 s later (a server whose script or
    writer starts after the client's cleanup)."""

    def __init__(self, client: Any, nursery: trio.Nursery, name: str,
                 hold: Callable[[str], bool], late: Callable[[str], object]) -> None:
        self._client, self._nursery, self._name = client, nursery, name
        self._hold, self._late = hold, late
        self.sent = trio.Event()

    def __getattr__(self, attr: str) -> Any:
        if attr != self._name:
            return getattr(self._client, attr)

        async def call(first: str, *args: Any, **kwargs: Any) -> Any:
            if not self._hold(first):
                return await getattr(self._client, attr)(first, *args, **kwargs)
            try:
                self.sent.set()
                await trio.sleep_forever()
            finally:
                self._nursery.start_soon(self._late_later, first)

        return call

    async def _late_later(self, first: str) -> None:
        await trio.sleep(0.1)
        self._late(first)


async def _cancel_once_held(target: Target, src: Path, name: str, hold: Callable[[str], bool],
                            late: Callable[[str], object], **kwargs: Any) -> None:
    async with connect(target.address) as real, trio.open_nursery() as outer:
        client = _LateAfterCancel(real, outer, name, hold, late)
        async with trio.open_nursery() as run:
            run.start_soon(functools.partial(migrate, src, client, **kwargs))  # type: ignore[arg-type]
            await client.sent.wait()
            run.cancel_scope.cancel()


@pytest.mark.usefixtures("per_step")
async def test_a_staging_dir_made_after_the_cleanup_is_deleted_too(target: Target,
                                                                    src: Path) -> None:
    # A tar batch's Exec cancelled before it answered may still start its script on the
    # server after the client's cleanup found nothing (test_guarantee saw it once under load):
    # here the script's "mkdir" comes 0.1 s after the cancellation. The cleanup waits for the
    # staging dir to stay gone, so none is left.
    write_tree(src, {f"s/{i}": os.urandom(100) for i in range(4)})

    def mkdir(command: str) -> None:
        (target.root / command.split("mkdir -- ./", 1)[1].split(" ", 1)[0]).mkdir()

    await _cancel_once_held(target, src, "exec", lambda c: "tar -x" in c, mkdir)
    assert src.is_dir() and temp_files(target.root) == []


@pytest.mark.usefixtures("per_step")
async def test_a_temporary_file_made_after_the_cleanup_is_deleted_too(target: Target,
                                                                       src: Path) -> None:
    # The same for a WriteRaw cancelled before its reply: the server may create the file
    # after the client's deletion (another of its threads); here 0.1 s after the cancellation.
    write_tree(src, {"big": os.urandom(300 * 1024)})
    await _cancel_once_held(target, src, "write_raw", lambda path: True,
                            lambda path: (target.root / path).write_bytes(b"partial"),
                            tar_batches=False)
    assert src.is_dir() and temp_files(target.root) == []


# --------------------------------------------------------------------------- bots


async def test_migrate_bot_seed_semantics(target: Target, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "bots" / "empty").mkdir(parents=True)
    (data / "bots" / "done.migrated").mkdir()
    (data / "bots" / "done").mkdir()
    write_tree(data / "bots" / "b1", {"x": b"1"})
    async with connect(target.address) as client:
        with pytest.raises(SourceError, match="no bot 'missing'"):  # a typo, not the seed's no-op
            await migrate_bot("missing", data, client)
        assert (await migrate_bot("empty", data, client)).status == "nothing-to-do"
        assert (await migrate_bot("done", data, client)).status == "already-migrated"
        first = await migrate_bot("b1", data, client)
        assert first.status == "migrated"
        again = await migrate_bot("b1", data, client)
        assert again.status == "already-migrated" and again.ok
        with pytest.raises(ConfigError):
            await migrate_bot("../etc", data, client)
    assert list_bots(data) == ["b1", "done", "empty"]  # b1.migrated too: every bot found


@pytest.mark.parametrize("via", ["pool", "address-map"])
@pytest.mark.parametrize("failure", ["bad-name", "unreachable"])
async def test_migrate_all_one_failing_bot(target: Target, tmp_path: Path, via: str,
                                           failure: str) -> None:
    data = tmp_path / "data"
    for bot in ("a", "b", "c"):
        write_tree(data / "bots" / bot, {"f": bot.encode(), "sub/g": b"g"})
    (data / "bots" / "z.migrated").mkdir()
    addresses = {"a": target.address, "b": target.address, "c": target.address}
    if failure == "unreachable":  # bot "b" lives in a container nobody listens on
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            addresses["b"] = f"127.0.0.1:{s.getsockname()[1]}"
    else:  # bot "b" has an entry that cannot be copied
        with open(os.fsencode(str(data / "bots" / "b")) + b"/\xff", "wb"):
            pass
    with trio.fail_after(20):
        if via == "pool":
            async with Pool(addresses, connect_timeout=2) as pool:
                reports = await migrate_all(data, pool, bot_concurrency=2, concurrency=2)
        else:
            reports = await migrate_all(data, addresses, bot_concurrency=2)
    by_bot = {Path(r.source).name: r for r in reports}
    assert [Path(r.source).name for r in reports] == ["a", "b", "c", "z"]
    assert by_bot["z"].status == "already-migrated"  # listed, as every bot found
    assert by_bot["a"].status == by_bot["c"].status == "migrated", (
        by_bot["a"].failures, by_bot["c"].failures)
    assert by_bot["b"].status == "incomplete" and by_bot["b"].error
    assert not by_bot["b"].ok
    assert (data / "bots" / "b").is_dir()
    assert (data / "bots" / "a.migrated").is_dir() and (data / "bots" / "c.migrated").is_dir()
    assert (target.root / "f").read_bytes() in (b"a", b"b", b"c")  # one shared container


async def test_migrate_all_takes_concurrency_as_migrate_does(target: Target,
                                                             tmp_path: Path) -> None:
    """One name for one thing (issue 26): ``concurrency`` as for migrate; the old
    ``file_concurrency`` still works, with a DeprecationWarning."""
    data = tmp_path / "data"
    write_tree(data / "bots" / "a", {"f": b"a"})
    with pytest.warns(DeprecationWarning, match="concurrency="):
        reports = await migrate_all(data, {"a": target.address}, file_concurrency=2)
    assert [r.status for r in reports] == ["migrated"]
    write_tree(data / "bots" / "b", {"g": b"b"})
    reports = await migrate_all(data, {"b": target.address}, concurrency=2)
    assert [(r.bot_id, r.status) for r in reports] == [("a", "already-migrated"),
                                                       ("b", "migrated")]


# --------------------------------------------------------------------------- the guarantee

_names = st.sampled_from(["a", "b", "c", "d e", "-x", "ü", "n\nl"])
_paths = st.lists(_names, min_size=1, max_size=3).map("/".join)
_trees = st.dictionaries(_paths, st.integers(0, 6 * CHUNK), min_size=1, max_size=8)


def _consistent(files: dict[str, int]) -> dict[str, int]:
    """Drop paths that would need a file to also be a directory."""
    out: dict[str, int] = {}
    for path, size in sorted(files.items(), key=lambda kv: kv[0].count("/")):
        parts = path.split("/")
        if any("/".join(parts[:i]) in out for i in range(1, len(parts))):
            continue
        if any(p.startswith(path + "/") for p in out):
            continue
        out[path] = size
    return out


@dataclass
class _Case:
    files: dict[str, int]
    fail_nth: int | None  # the Nth WriteRaw chunk fails in the server (per-file path)
    cancel_after: float | None
    concurrency: int
    tar: bool  # small files as tar batches through Exec
    tar_cut: int | None  # a tar batch's stream is cut after this many bytes


class _CutTarClient:
    """A real client whose tar batches arrive cut short (what a dropped stream delivers)."""

    def __init__(self, client: Any, cut: int | None) -> None:
        self._client = client
        self._cut = cut

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def exec(self, command: str, *, stdin: bytes = b"", **kwargs: Any) -> Any:
        if self._cut is not None and stdin and "tar -x" in command:
            stdin = stdin[:self._cut]
        return await self._client.exec(command, stdin=stdin, **kwargs)


async def _run_case(tmp: Path, case: _Case, kind: str) -> None:
    src = tmp / "bots" / "b"
    root = tmp / "container"
    root.mkdir(parents=True)
    write_tree(src, {p: os.urandom(n) for p, n in case.files.items()})
    (src / "emptydir").mkdir(exist_ok=True)
    before = snapshot(src)
    renamed = Path(str(src) + MIGRATED_SUFFIX)
    server: Any = None
    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        if kind == "trio":
            hooks = ServerHooks(fail_write_nth=case.fail_nth)
            address = str(await nursery.start(functools.partial(serve, root, hooks=hooks)))
        else:
            server, port = start_grpcio_server(root, servicer=_failing_servicer(root,
                                                                                case.fail_nth))
            address = f"127.0.0.1:{port}"
        try:
            async with connect(address, chunk_size=CHUNK) as client:
                with trio.move_on_after(case.cancel_after if case.cancel_after is not None
                                        else math.inf) as scope:
                    faulty: Any = _CutTarClient(client, case.tar_cut)
                    report = await migrate(src, faulty,
                                           concurrency=case.concurrency, tar_batches=case.tar)
                    assert report.ok == (report.renamed_to is not None)
        finally:
            if server is not None:
                server.stop(grace=None)
            nursery.cancel_scope.cancel()

    after_src = renamed if renamed.exists() else src
    assert renamed.exists() != src.exists()
    assert snapshot(after_src) == before, "the source tree was modified"
    dest = snapshot(root)
    identical = all(
        rel in dest and dest[rel][0] == v[0] and dest[rel][3] == v[3] for rel, v in before.items()
    )
    if scope.cancelled_caught:  # a cancellation that reached migrate() never renames
        assert not renamed.exists(), case
    else:  # migrate() returned: renamed iff everything is there
        assert renamed.exists() == identical, (renamed.exists(), case)
    for rel, v in dest.items():  # never a partial file at a final path
        if v[0] == stat.S_IFREG:
            assert rel in before and before[rel][3] == v[3], f"partial or foreign file {rel!r}"
    assert temp_files(root) == []


def _failing_servicer(root: Path, fail_nth: int | None) -> object:
    """The grpcio in-place servicer, failing the Nth chunk after writing the earlier ones."""
    servicer: Any = make_servicer(root)
    if fail_nth is None:
        return servicer
    original = servicer.WriteRaw
    counter = {"n": 0}

    def counting(request_iterator: Iterator[Any]) -> Iterator[Any]:
        for chunk in request_iterator:
            counter["n"] += 1
            if counter["n"] == fail_nth:
                raise OSError(28, "injected: no space left on device")
            yield chunk

    def write_raw(request_iterator: Any, context: Any) -> Any:
        return original(counting(request_iterator), context)

    servicer.WriteRaw = write_raw
    return servicer


@pytest.mark.parametrize("kind", ["trio", "grpcio"])
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    files=_trees.map(_consistent),
    fail_nth=st.none() | st.integers(1, 30),
    cancel_after=st.none() | st.floats(0.0, 0.15),
    concurrency=st.integers(1, 4),
    tar=st.booleans(),
    tar_cut=st.none() | st.integers(0, 8 * 6 * CHUNK),
)
def test_guarantee(tmp_path_factory: pytest.TempPathFactory, kind: str, files: dict[str, int],
                   fail_nth: int | None, cancel_after: float | None, concurrency: int,
                   tar: bool, tar_cut: int | None) -> None:
    tmp = tmp_path_factory.mktemp("guarantee")
    trio.run(_run_case, tmp, _Case(files, fail_nth, cancel_after, concurrency, tar, tar_cut),
             kind)


# --------------------------------------------------------------------------- tar batches


async def test_small_files_go_through_tar_batches(target: Target, src: Path) -> None:
    names = {"d/-dash": b"1", "d/sp ace": b"22", "d/new\nline": b"333", "q'u\"o$te": b"4",
             "ü/x": os.urandom(5000), "big": os.urandom(300 * 1024), "e/empty": b""}
    write_tree(src, names)
    (src / "d" / "-dash").chmod(0o751)
    os.utime(src / "d" / "sp ace", ns=(1, 1_600_000_000_123_456_789))
    before = snapshot(src)
    async with connect(target.address, chunk_size=64 * 1024) as client:
        report = await migrate(src, client, verify="sha256")
    assert report.status == "migrated", report.failures
    assert report.files == len(names)
    dest = snapshot(target.root)
    for rel, v in before.items():
        assert dest[rel][0] == v[0] and dest[rel][3] == v[3], rel
        assert dest[rel][1:3] == v[1:3], rel  # modes and mtimes, through tar
    assert temp_files(target.root) == []
    if target.hooks is not None:  # only "big" (> 256 KiB) was streamed through WriteRaw
        assert target.hooks.writes == 5


async def test_container_without_exec_uses_write_raw(src: Path, tmp_path: Path) -> None:
    import grpc

    root = tmp_path / "c"
    root.mkdir()
    servicer: Any = make_servicer(root)

    def no_exec(request_iterator: Any, context: Any) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "exec is not available")

    servicer.Exec = no_exec
    server, port = start_grpcio_server(root, servicer=servicer)
    try:
        write_tree(src, {f"f{i}": os.urandom(100 * i + 1) for i in range(5)})
        async with connect(f"127.0.0.1:{port}") as client:
            report = await migrate(src, client, preserve=False, rename_without_flush=True)
    finally:
        server.stop(grace=None)
    assert report.status == "migrated" and report.files == 5 and report.flushed is False


async def test_stale_staging_dirs_are_removed(target: Target, src: Path) -> None:
    stale = target.root / (TAR_PREFIX + "dead") / "0"
    stale.mkdir(parents=True)
    (stale / "half").write_bytes(b"partial")
    write_tree(src, {"a": b"1"})
    async with connect(target.address) as client:
        report = await migrate(src, client)
    assert report.status == "migrated"
    assert sorted(p.name for p in target.root.iterdir()) == ["a"]


# --------------------------------------------------------------------------- walk beside the probe


async def test_the_source_is_walked_while_the_container_is_probed(
    target: Target, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The walk does not wait for the survey and the probe: the first Exec (the probe) is held
    # until the walk has listed something, and then the run goes on as usual.
    write_tree(src, {f"d/f{i}": b"x" * i for i in range(20)})
    listed = trio.Event()
    token = trio.lowlevel.current_trio_token()
    real_next_batch = _walk.Walker.next_batch

    def next_batch(self: _walk.Walker, limit: int = _walk.BATCH_SIZE) -> list[Any]:
        batch = real_next_batch(self, limit)
        token.run_sync_soon(listed.set)
        return batch

    monkeypatch.setattr(_walk.Walker, "next_batch", next_batch)
    walked_first: list[bool] = []

    class ProbeHeld(_RecordingClient):
        async def exec(self, command: str, **kwargs: Any) -> Any:
            if not walked_first:
                with trio.move_on_after(5):
                    await listed.wait()
                walked_first.append(listed.is_set())
            return await super().exec(command, **kwargs)

    async with connect(target.address) as real:
        client: Any = ProbeHeld(real)
        report = await migrate(src, client)
    assert walked_first == [True]
    assert report.status == "migrated", report.failures
    assert snapshot(target.root) == snapshot(src.parent / (src.name + ".migrated"))


# --------------------------------------------------------------------------- early writeback


class _RecordingClient:
    """A real client that records the commands it sends through Exec."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.commands: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def exec(self, command: str, **kwargs: Any) -> Any:
        self.commands.append(command)
        return await self._client.exec(command, **kwargs)


@pytest.mark.usefixtures("per_step")
@pytest.mark.parametrize("mode", ["migrate", "no-rename", "dry-run"])
async def test_early_writeback_syncs_while_copying(
    target: Target, src: Path, monkeypatch: pytest.MonkeyPatch, mode: str,
) -> None:
    monkeypatch.setattr(migrate_meta, "WRITEBACK_BYTES", 400 * 1024)
    files = {f"f{i}": os.urandom(300 * 1024) for i in range(6)}  # streamed, not tar-batched
    write_tree(src, files)
    async with connect(target.address, chunk_size=64 * 1024) as real:
        client: Any = _RecordingClient(real)
        report = await migrate(src, client, concurrency=1, rename=mode != "no-rename",
                               dry_run=mode == "dry-run")
    final_sync = flush_command()  # early and final: a syncfs of the destination
    syncs = client.commands.count(final_sync)
    if mode == "migrate":
        assert report.status == "migrated", report.failures
        # 1.8 MB sent in 300 KiB files: a first sync once 400 KiB were sent, then one per
        # 400 KiB more sent after the previous sync returned (fewer when the copy outruns the
        # syncs), then the final sync before the rename.
        assert 2 <= syncs <= 1 + 4, client.commands
        assert client.commands[-1] == final_sync, client.commands
        assert sorted(p.name for p in target.root.iterdir()) == sorted(files)
    else:
        # Nothing will be renamed: no early sync (and none at the end either).
        assert syncs == 0, client.commands


@pytest.mark.usefixtures("per_step")
@pytest.mark.parametrize("verify", ["size", "sha256"])
async def test_tar_batch_is_one_exec_where_python3_moves_it(target: Target, src: Path,
                                                            verify: str) -> None:
    # More than a few small files, python3 in the container: each batch is unpacked, checked
    # and moved by one Exec (no listing to send back, no second Exec for the move).
    files = {f"d{i % 3}/f{i}": os.urandom(50 + i) for i in range(40)}
    write_tree(src, files)
    async with connect(target.address) as real:
        client: Any = _RecordingClient(real)
        report = await migrate(src, client, verify=verify)  # type: ignore[arg-type]
    assert report.status == "migrated", report.failures
    assert report.files == 40 and report.mtime_precision == "ns"
    extracts = [c for c in client.commands if "tar -x" in c]
    assert len(extracts) == 1, client.commands
    assert not any("os.rename" in c or "mv -f" in c for c in client.commands), client.commands
    assert snapshot(target.root) == snapshot(src.parent / (src.name + ".migrated"))


async def test_totals_are_final_once_the_scan_is_over(target: Target, src: Path) -> None:
    # ProgressState's contract: files_total/bytes_total no longer grow once scanning is
    # false, even where the walk ends well before the dispatcher has counted its entries.
    n = 3000
    write_tree(src, {f"d{i % 7}/f{i}": b"x" * (i % 5) for i in range(n)})
    progress = Progress()
    seen: list[tuple[int, int]] = []

    async def watch() -> None:
        state = await progress.wait(lambda s: not s.scanning)
        seen.append((state.files_total, state.bytes_total))

    async with connect(target.address) as client, trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        report = await migrate(src, client, progress=progress)
    assert report.status == "migrated", report.failures
    assert seen == [(n, sum(i % 5 for i in range(n)))]


@pytest.mark.usefixtures("per_step")
async def test_early_writeback_once_everything_was_sent(target: Target, src: Path) -> None:
    # Small files only (one tar batch, far below WRITEBACK_BYTES): one early flush once the
    # walk is over and every byte was sent (it runs while the files are moved into place),
    # then the final one (both the same syncfs of the destination).
    files = {f"d/{i}": os.urandom(200) for i in range(_scripts.SHELL_META_MAX + 3)}
    write_tree(src, files)
    async with connect(target.address) as real:
        client: Any = _RecordingClient(real)
        report = await migrate(src, client)
    assert report.status == "migrated", report.failures
    assert client.commands.count(flush_command()) == 2, client.commands
    assert client.commands[-1] == flush_command(), client.commands
    extract = next(i for i, c in enumerate(client.commands) if "tar -x" in c)
    assert client.commands.index(flush_command()) > extract


@pytest.mark.usefixtures("per_step")
@pytest.mark.parametrize("small", [0, 3, _scripts.SHELL_META_MAX + 3])
async def test_python3_asked_only_for_work_that_may_use_it(
    target: Target, src: Path, small: int
) -> None:
    # Large files only (WriteRaw, a small meta batch at the end): python3 is never started in
    # the container; nor for a tar batch the shell moves (3 files; with the 2 large ones and
    # 2 directories, the metadata batch is still the shell's); with a larger tar batch, once,
    # beside it.
    files = {f"big{i}": os.urandom(300 * 1024) for i in range(2)}
    files |= {f"s/{i}": os.urandom(100) for i in range(small)}
    write_tree(src, files)
    async with connect(target.address) as real:
        client: Any = _RecordingClient(real)
        report = await migrate(src, client)
    assert report.status == "migrated", report.failures
    assert any("tar -x" in c for c in client.commands) == (small > 0)
    asked = client.commands.count(_scripts.PY_PROBE_COMMAND)
    assert asked == (1 if small > _scripts.SHELL_META_MAX else 0), client.commands
    assert snapshot(target.root) == snapshot(src.parent / (src.name + ".migrated"))


# --------------------------------------------------------------------------- parked files


#: Streamed files of :func:`_mixed_tree`: a full placement batch, then 4 more.
STREAMED = place.PLACE_BATCH + 4


def _mixed_tree(src: Path, streamed: int = STREAMED) -> dict[str, bytes]:
    files = {f"small/{i}": os.urandom(100 + i) for i in range(3 * _scripts.SHELL_META_MAX)}
    files |= {f"mid/{i % 3}/f{i}": os.urandom(300 * 1024 + i) for i in range(streamed)}
    write_tree(src, files)
    for i in range(streamed):
        p = src / "mid" / str(i % 3) / f"f{i}"
        p.chmod(0o600 + i % 8)
        os.utime(p, ns=(1, 1_600_000_000_000_000_000 + i * 1_000_001))
    return files


def _place_commands(commands: list[str]) -> list[str]:
    return [c for c in commands if is_place(c)]


@pytest.mark.usefixtures("per_step")
async def test_streamed_files_are_placed_in_batches(target: Target, src: Path) -> None:
    # Streamed files that end once python3 is known are parked beside their final names and
    # checked, given their modes and mtimes and moved in batches by the python3 mover: no Stat
    # and no Rename per file, and the tree arrives whole.
    _mixed_tree(src)
    async with connect(target.address, chunk_size=64 * 1024) as real:
        client: Any = PythonFirst(real, target.root)
        report = await migrate(src, client, concurrency=64)
    assert report.status == "migrated", report.failures
    assert report.files == STREAMED + 3 * _scripts.SHELL_META_MAX
    assert report.mtime_precision == "ns"
    assert client.stats == client.renames == 0
    # a full batch, then the last 4 once all are sent
    assert len(_place_commands(client.commands)) == 2
    assert snapshot(target.root) == snapshot(src.parent / (src.name + ".migrated"))
    assert temp_files(target.root) == []


@pytest.mark.usefixtures("per_step")
async def test_the_last_parked_files_are_placed_beside_a_running_placement(
    target: Target, src: Path
) -> None:
    # Once the last stream has ended, the files still parked are placed at once, beside the
    # placement still running (held here until the last one starts), not after it.
    _mixed_tree(src)  # a full placement batch, then the last 4
    last_started = trio.Event()
    overlapped: list[bool] = []

    async def hold_the_first(client: Any, command: str, **kwargs: Any) -> Any:
        if not overlapped:
            overlapped.append(False)
            with trio.move_on_after(5):
                await last_started.wait()
                overlapped[0] = True
        else:
            last_started.set()
        return await client.exec(command, **kwargs)

    async with connect(target.address, chunk_size=64 * 1024) as real:
        client: Any = PythonFirst(real, target.root, place=hold_the_first)
        report = await migrate(src, client, concurrency=64)
    assert report.status == "migrated", report.failures
    assert overlapped == [True] and len(_place_commands(client.commands)) == 2
    assert client.stats == client.renames == 0
    assert snapshot(target.root) == snapshot(src.parent / (src.name + ".migrated"))
    assert temp_files(target.root) == []


@pytest.mark.usefixtures("per_step")
async def test_a_parked_file_that_fails_its_check_is_deleted_and_blocks_the_rename(
    target: Target, src: Path
) -> None:
    _mixed_tree(src, streamed=3)

    def grow(part: Path) -> None:  # the container's copy is not what was sent
        if part.parent.name == "1":
            with part.open("ab") as f:
                f.write(b"!")

    async with connect(target.address) as real:
        client: Any = PythonFirst(real, target.root, after=grow)
        report = await migrate(src, client, concurrency=64)
    assert report.status == "incomplete"
    [failure] = report.failures
    assert failure.path == "mid/1/f1" and _scripts.CHECK_FAILED in failure.error
    assert "expected 307201, found 307202" in failure.error
    assert src.is_dir() and temp_files(target.root) == []
    assert not (target.root / "mid" / "1" / "f1").exists()
    assert (target.root / "mid" / "0" / "f0").read_bytes() == (src / "mid/0/f0").read_bytes()


@pytest.mark.usefixtures("per_step")
async def test_parked_files_without_records_go_the_per_file_way(target: Target,
                                                                src: Path) -> None:
    # The placement Exec printed nothing (a container whose python3 died, say): each parked
    # file is checked and renamed by its own Stat and Rename.
    _mixed_tree(src, streamed=5)

    async def silent(client: Any, command: str, **kwargs: Any) -> Any:
        return await client.exec("true", **kwargs)

    async with connect(target.address) as real:
        client: Any = PythonFirst(real, target.root, place=silent)
        report = await migrate(src, client, concurrency=64)
    assert report.status == "migrated", report.failures
    assert client.stats == client.renames == 5
    assert snapshot(target.root) == snapshot(src.parent / (src.name + ".migrated"))
    assert temp_files(target.root) == []


@pytest.mark.usefixtures("per_step")
async def test_a_run_stopped_while_placing_deletes_the_parked_files(target: Target,
                                                                   src: Path) -> None:
    _mixed_tree(src, streamed=5)
    placing = trio.Event()

    async def hang(client: Any, command: str, **kwargs: Any) -> Any:
        placing.set()
        await trio.sleep_forever()

    async with connect(target.address) as real, trio.open_nursery() as nursery:
        client: Any = PythonFirst(real, target.root, place=hang)
        nursery.start_soon(functools.partial(migrate, src, client, concurrency=64))
        await placing.wait()
        nursery.cancel_scope.cancel()
    assert src.is_dir() and not (src.parent / (src.name + ".migrated")).exists()
    assert temp_files(target.root) == []
    assert not (target.root / "mid" / "0" / "f0").exists()


def test_symlink_on_the_way() -> None:
    from memoh_trio._paths import symlink_on_the_way
    links = {"sub", "a/b"}
    assert symlink_on_the_way("sub/file", links) == "sub"
    assert symlink_on_the_way("a/b/c/d", links) == "a/b"
    assert symlink_on_the_way("sub", links) is None  # the entry itself: replaced, not followed
    assert symlink_on_the_way("a/bc/d", links) is None and symlink_on_the_way("x", set()) is None
