"""End to end into real containers' userlands: ``memoh_trio.migrate`` into memoh-trio's server as a
child process (plain, and inside the busybox / busybox-python / gnu-nopython kinds of
``../shared/containers/run-in.sh``) and into Memoh's own Go server, with the tree shapes that broke
the scripts before issue 10 (1,000 files with 100-byte names, 400 directories with one small file
each, 700 more small files, 1,000 symlinks, 1,000 empty files, empty directories, modes, 2020
mtimes with nanoseconds).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from containertools import snapshot
from helpers import PythonFirst
from peers import TEST_TOKEN, memoh_go_server, memoh_trio_server

import memoh_trio
from memoh_trio import MigrationReport
from memoh_trio._tarbatch import TAR_PREFIX

KINDS = ("plain", "busybox", "busybox-python", "gnu-nopython")
#: 2020-01-01T00:00:00Z plus some nanoseconds.
OLD = 1_577_836_800_000_000_000


def build_tree(src: Path, *, scale: int = 1000) -> None:
    """The tree of issue 10, ``scale`` entries per shape (400 session directories at 1,000)."""
    (src / "long").mkdir(parents=True)
    for i in range(scale):
        name = f"{i:05d}-" + "n" * 94  # 100 bytes
        (src / "long" / name).write_bytes(b"%d\n" % i * (i % 7 + 1))
    for i in range(scale * 2 // 5):
        d = src / "sessions" / str(uuid.UUID(int=i + 1))
        d.mkdir(parents=True)
        (d / "state.json").write_bytes(b'{"n": %d}' % i)
    (src / "links").mkdir()
    for i in range(scale):
        target = (f"../long/{i:05d}-" + "n" * 94) if i % 3 else ("/abs/target" if i % 2
                                                                  else f"dangling-{i}")
        (src / "links" / f"l{i:05d}").symlink_to(target)
    (src / "empty").mkdir()
    for i in range(scale):
        (src / "empty" / f"e{i:05d}").write_bytes(b"")
    (src / "many").mkdir()  # with the files above: more than one tar batch of 2,000
    for i in range(scale * 7 // 10):
        (src / "many" / f"m{i:05d}").write_bytes(b"m%d" % i)
    (src / "emptydirs" / "a" / "b").mkdir(parents=True)
    (src / "emptydirs" / "c").mkdir()
    (src / "modes").mkdir()
    (src / "modes" / "secret").write_bytes(b"s")
    os.chmod(src / "modes" / "secret", 0o600)
    (src / "modes" / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "modes" / "tool", 0o755)
    (src / "modes" / "private").mkdir()
    (src / "modes" / "private" / "f").write_bytes(b"p")
    # mtimes last, deepest first, so no later write moves them.
    paths = sorted((p for p in src.rglob("*")), key=lambda p: -len(p.parts))
    for n, p in enumerate(paths):
        t = OLD + n * 1_000_000_007 + 123_456_789
        os.utime(p, ns=(t, t), follow_symlinks=False)
    os.chmod(src / "modes" / "private", 0o700)


@contextlib.asynccontextmanager
async def container(kind: str, root: Path) -> AsyncIterator[memoh_trio.Client]:
    if kind == "memoh-go":
        async with memoh_go_server(root) as peer, memoh_trio.connect(peer.target) as client:
            yield client
        return
    async with memoh_trio_server(root, kind=None if kind == "plain" else kind) as peer, \
            memoh_trio.connect(peer.target, token=TEST_TOKEN) as client:
        yield client


def precision_of(kind: str) -> str:
    return "s" if kind == "busybox" else "ns"


def temporaries(root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in root.rglob(".memoh-*")]


class Recording:
    """A client that remembers each Exec's command and exit code (to tell a tar batch that
    worked from one that fell back to streams)."""

    def __init__(self, client: memoh_trio.Client) -> None:
        self._client = client
        self.execs: list[tuple[str, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def exec(self, command: str, **kw: Any) -> Any:
        res = await self._client.exec(command, **kw)
        self.execs.append((command, res.exit_code))
        return res

    def tar_batches(self) -> list[int]:
        return [code for cmd, code in self.execs if TAR_PREFIX in cmd and "tar -x" in cmd]


async def migrate_tree(kind: str, tmp_path: Path, **kw: Any,
                       ) -> tuple[MigrationReport, Path, Recording]:
    src = tmp_path / "src"
    build_tree(src)
    dst = tmp_path / "dst"
    dst.mkdir()
    async with container(kind, dst) as client:
        rec = Recording(client)
        with trio.fail_after(120):
            report = await memoh_trio.migrate(src, rec, **kw)  # type: ignore[arg-type]
    return report, dst, rec


async def check_big_tree(kind: str, tmp_path: Path, **kw: Any) -> Recording:
    report, dst, rec = await migrate_tree(kind, tmp_path, **kw)
    assert report.status == "migrated", (report.failures[:5], report.error)
    batches = rec.tar_batches()
    if rec.execs and rec.execs[0][0].startswith("exec python3 -S -c "):
        # the container agent did the container's work: its Exec alone, ended cleanly
        assert [code for _, code in rec.execs] == [0], [c[:40] for c, _ in rec.execs]
    elif kw.get("tar_batches", True):  # every batch unpacked in the container, none fell back
        assert len(batches) >= 2 and set(batches) == {0}, batches
    else:
        assert batches == []
    assert report.mtime_precision == precision_of(kind)
    migrated = tmp_path / "src.migrated"
    assert report.renamed_to == str(migrated)
    assert report.symlinks == 1000 and report.files == 1000 + 400 + 700 + 1000 + 3
    want = snapshot(migrated, report.mtime_precision)
    got = snapshot(dst, report.mtime_precision)
    assert got.keys() == want.keys()
    diff = [k for k in want if got[k] != want[k]]
    assert diff == [], [(k, want[k][:3], got[k][:3]) for k in diff[:5]]
    assert temporaries(dst) == []
    return rec


@pytest.mark.usefixtures("per_step")
@pytest.mark.parametrize("kind", KINDS)
async def test_big_tree_into_each_container_kind(kind: str, tmp_path: Path) -> None:
    await check_big_tree(kind, tmp_path)


@pytest.mark.slow  # 6-9 s alone, 16-30 s with the machine loaded: 3,400 WriteRaw streams
@pytest.mark.parametrize("kind", ["plain", "busybox"])
async def test_big_tree_without_tar_batches(kind: str, tmp_path: Path) -> None:
    """Every file through WriteRaw; links and metadata still through the scripts."""
    await check_big_tree(kind, tmp_path, tar_batches=False)


@pytest.mark.memoh_go
async def test_big_tree_into_memoh_go_server(tmp_path: Path) -> None:
    """The same tree into Memoh's server with python3 on the host: the container agent does
    every container step over one Exec."""
    rec = await check_big_tree("memoh-go", tmp_path)
    assert len(rec.execs) == 1 and rec.execs[0][0].startswith("exec python3 -S -c ")


async def test_big_tree_by_the_agent_in_busybox_python(tmp_path: Path) -> None:
    rec = await check_big_tree("busybox-python", tmp_path)
    assert len(rec.execs) == 1 and rec.execs[0][0].startswith("exec python3 -S -c ")


def conflict_tree(tmp_path: Path, *, unlistable: bool = False) -> tuple[Path, Path, Path]:
    """A source and a destination that conflict (``dst/sub -> outside``, a real ``dst/x/``);
    ``unlistable``: the destination also holds a name that is not UTF-8, so that Memoh's server
    and ours fail to list it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"keep")
    os.chmod(outside / "keep", 0o644)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "file").write_bytes(b"new")
    (src / "sub" / "link").symlink_to("file")
    (src / "x").symlink_to("sub")  # the destination has a real directory x/
    (src / "fine").write_bytes(b"fine")
    os.utime(src / "fine", ns=(OLD, OLD))
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "sub").symlink_to(outside)
    (dst / "x").mkdir()
    if unlistable:
        os.close(os.open(os.fsencode(dst) + b"/caf\xe9", os.O_CREAT | os.O_WRONLY, 0o644))
    return src, dst, outside


@pytest.mark.parametrize("kind", [*KINDS, pytest.param("memoh-go", marks=pytest.mark.memoh_go)])
@pytest.mark.parametrize("tar_batches", [True, False], ids=["tar", "streams"])
@pytest.mark.parametrize("resume", [True, False], ids=["resume", "no-resume"])
async def test_destination_conflicts_fail_and_touch_nothing(kind: str, tar_batches: bool,
                                                           resume: bool, tmp_path: Path) -> None:
    """Destination ``sub -> /outside`` and a real directory ``x/`` where the source has a
    symlink: those entries fail, nothing outside changes, the source is kept (without resume
    too: the destination is listed for its symlinks all the same)."""
    src, dst, outside = conflict_tree(tmp_path)
    before = snapshot(outside, "ns")
    async with container(kind, dst) as client:
        with trio.fail_after(60):
            report = await memoh_trio.migrate(src, client, tar_batches=tar_batches,
                                              resume=resume)
    assert report.status == "incomplete" and not report.ok
    assert report.renamed_to is None and src.is_dir()
    failed = {f.path for f in report.failures}
    assert "x" in failed and "sub/file" in failed, report.failures
    assert snapshot(outside, "ns") == before
    assert list((dst / "x").iterdir()) == []
    assert (dst / "fine").read_bytes() == b"fine"
    assert temporaries(dst) == []


@pytest.mark.parametrize("kind", [*KINDS, pytest.param("memoh-go", marks=pytest.mark.memoh_go)])
@pytest.mark.parametrize("tar_batches", [True, False], ids=["tar", "streams"])
async def test_a_destination_the_server_cannot_list_is_never_written_through(
        kind: str, tar_batches: bool, tmp_path: Path) -> None:
    """The same conflicts, and one name in the destination that is not UTF-8: Memoh's server
    and ours then fail the recursive ListDir. The symlinks are found by ``find`` in the
    container instead: before, a streamed ``sub/file`` went through ``sub -> outside`` into
    Memoh's server's ``outside/``."""
    src, dst, outside = conflict_tree(tmp_path, unlistable=True)
    before = snapshot(outside, "ns")
    async with container(kind, dst) as client:
        with pytest.raises(memoh_trio.RPCError):  # the listing fails, so resume cannot help
            await client.list_dir("", recursive=True)
        with trio.fail_after(60):
            report = await memoh_trio.migrate(src, client, tar_batches=tar_batches)
    assert report.status == "incomplete" and report.renamed_to is None and src.is_dir()
    failed = {f.path: f.error for f in report.failures}
    assert "symlink is in the way" in failed["sub/file"] and "x" in failed, failed
    assert snapshot(outside, "ns") == before
    assert (dst / "fine").read_bytes() == b"fine" and (dst / "sub").is_symlink()
    assert temporaries(dst) == []


async def test_a_destination_neither_listed_nor_searched_gets_nothing(tmp_path: Path) -> None:
    """Where the listing fails and the container cannot run ``find`` (here: a server that
    runs no command), the run copies nothing and says why, rather than write blind."""
    src, dst, _ = conflict_tree(tmp_path, unlistable=True)
    before = snapshot(dst, "ns")
    async with memoh_trio_server(dst, "--no-exec") as peer, \
            memoh_trio.connect(peer.target, token=TEST_TOKEN) as client:
        report = await memoh_trio.migrate(src, client)
    assert report.status == "incomplete" and report.renamed_to is None and src.is_dir()
    assert report.files == 0 and report.error is not None
    assert report.error.startswith("cannot list the destination"), report.error
    assert "nor find its symlinks there" in report.error and "nothing was copied" in report.error
    assert snapshot(dst, "ns") == before


async def test_a_command_that_fails_in_the_container(tmp_path: Path) -> None:
    """chmod fails in the container (the metadata step of one file): that file fails, the run
    is incomplete, the source kept; the files are complete at their final paths or absent."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(b"x" * i)
    dst = tmp_path / "dst"
    dst.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "chmod").write_text("#!/bin/sh\necho 'chmod: refused' >&2\nexit 1\n")
    os.chmod(bin_dir / "chmod", 0o755)
    apps = Path(os.environ.get("MEMOH_CONTAINERS", "/tmp/memoh-containers")) / "gnu-nopython"
    path = f"{bin_dir}:{apps}"  # the kind's own PATH, our chmod first
    async with memoh_trio_server(dst, kind="gnu-nopython") as peer, \
            memoh_trio.connect(peer.target, token=TEST_TOKEN) as client:
        with trio.fail_after(60):
            report = await _with_path(client, path, src)
    assert report.status == "incomplete" and report.renamed_to is None and src.is_dir()
    assert len(report.failures) == 20  # every file: its metadata step failed
    assert all("chmod failed" in f.error for f in report.failures), report.failures[:3]
    for i in range(20):
        assert (dst / f"f{i}").read_bytes() == b"x" * i
    assert temporaries(dst) == []


async def _with_path(client: Any, path: str, src: Path) -> MigrationReport:
    """Run a migration whose Exec calls see ``PATH=path`` (a container whose chmod fails)."""

    class WithPath:
        def __getattr__(self, name: str) -> Any:
            return getattr(client, name)

        async def exec(self, command: str, **kw: Any) -> Any:
            kw["env"] = [f"PATH={path}"]
            return await client.exec(command, **kw)

    return await memoh_trio.migrate(src, WithPath(), verify="size")  # type: ignore[arg-type]


async def test_a_failed_tar_batch_falls_back_to_streams(tmp_path: Path) -> None:
    """tar is there but fails (exit 70 from the extract): the batch's files go one WriteRaw
    each, are verified as such, and the run completes."""
    src = tmp_path / "src"
    files = {f"d{i % 3}/f{i}": b"y" * i for i in range(30)}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    dst = tmp_path / "dst"
    dst.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tar").write_text("#!/bin/sh\necho 'tar: broken' >&2\nexit 2\n")
    os.chmod(bin_dir / "tar", 0o755)
    apps = Path(os.environ.get("MEMOH_CONTAINERS", "/tmp/memoh-containers")) / "gnu-nopython"
    async with memoh_trio_server(dst, kind="gnu-nopython") as peer, \
            memoh_trio.connect(peer.target, token=TEST_TOKEN) as client:
        rec = Recording(client)
        with trio.fail_after(60):
            report = await _with_path(rec, f"{bin_dir}:{apps}", src)
    assert report.status == "migrated", report.failures
    assert rec.tar_batches() and set(rec.tar_batches()) == {70}
    for rel, data in files.items():
        assert (dst / rel).read_bytes() == data
    assert temporaries(dst) == []


@pytest.mark.parametrize("kind", ["plain", "busybox"])
async def test_server_that_drops_stdin_never_ends_migrated(kind: str, tmp_path: Path) -> None:
    """An Exec that loses its stdin (Memoh's server drops the first message's): the scripts
    print no record, so links, modes/mtimes and tar batches fail; nothing is renamed."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    os.chmod(src / "a", 0o600)
    (src / "l").symlink_to("a")
    dst = tmp_path / "dst"
    dst.mkdir()

    async with container(kind, dst) as client:
        class DropsStdin:
            def __getattr__(self, name: str) -> Any:
                return getattr(client, name)

            async def exec(self, command: str, **kw: Any) -> Any:
                kw.pop("stdin", None)
                return await client.exec(command, **kw)

        with trio.fail_after(60):
            report = await memoh_trio.migrate(src, DropsStdin())  # type: ignore[arg-type]
    assert report.status == "incomplete" and report.renamed_to is None and src.is_dir()
    assert {f.path for f in report.failures} >= {"a", "l"}
    assert all("no record" in f.error or "unpack" in f.error for f in report.failures), \
        report.failures
    assert temporaries(dst) == []


@pytest.mark.parametrize("kind", ["busybox", "gnu-nopython"])
async def test_cli_json_says_the_mtime_precision(kind: str, tmp_path: Path) -> None:
    """``memoh-trio migrate --json``: the report names the precision the container allowed."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"f")
    os.utime(src / "d" / "f", ns=(OLD + 123, OLD + 123))
    dst = tmp_path / "dst"
    dst.mkdir()
    async with memoh_trio_server(dst, kind=kind) as peer:
        env = dict(os.environ, MEMOH_TRIO_TOKEN=TEST_TOKEN)
        with trio.fail_after(60):
            done = await trio.run_process(
                [sys.executable, "-m", "memoh_trio", "migrate", str(src), "--target", peer.target,
                 "--json"], capture_stdout=True, capture_stderr=True, check=False, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "migrated"
    assert report["mtime_precision"] == precision_of(kind)
    want = OLD + 123 if precision_of(kind) == "ns" else OLD
    assert (dst / "d" / "f").stat().st_mtime_ns == want


@pytest.mark.parametrize("kind", ["plain", "busybox",
                                  pytest.param("memoh-go", marks=pytest.mark.memoh_go)])
@pytest.mark.parametrize("tar_batches", [True, False], ids=["tar", "streams"])
async def test_dest_directory_is_entered_by_the_scripts(kind: str, tar_batches: bool,
                                                        tmp_path: Path) -> None:
    """``dest`` below the server's root: every script runs there. Memoh's server resolves a
    relative Exec ``work_dir`` against its own process's directory (it failed with ``chdir
    sub/d ir: no such file or directory``), so the scripts ``cd`` into it themselves."""
    src = tmp_path / "src"
    build_tree(src, scale=20)
    dst = tmp_path / "dst"
    dst.mkdir()
    async with container(kind, dst) as client:
        with trio.fail_after(60):
            report = await memoh_trio.migrate(src, client, dest="sub/d ir",
                                              tar_batches=tar_batches)
    assert report.status == "migrated", (report.failures[:5], report.error)
    migrated = tmp_path / "src.migrated"
    want = snapshot(migrated, report.mtime_precision)
    got = snapshot(dst / "sub" / "d ir", report.mtime_precision)
    assert got == want
    assert sorted(os.listdir(dst)) == ["sub"]


@pytest.mark.parametrize("kind", ["plain", "busybox-python", "busybox",
                                  pytest.param("memoh-go", marks=pytest.mark.memoh_go)])
@pytest.mark.usefixtures("per_step")
async def test_large_tar_batch_with_conflicts(kind: str, tmp_path: Path) -> None:
    """A tar batch of more than SHELL_META_MAX files (moved by one python3 process where the
    container has python3, which also applies modes and mtimes): a directory symlink on the way
    and a real directory at a file's name fail only those files, an old symlink at a file's
    name is replaced (its target untouched), nothing outside changes, the rest arrives exact."""
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"outside")
    for d in ("ok", "sub", "new/deep/er"):
        (src / d).mkdir(parents=True)
        for i in range(12):
            (src / d / f"f{i}").write_bytes(b"%s %d\n" % (d.encode(), i))
            os.chmod(src / d / f"f{i}", 0o600 + i % 2 * 0o40)
            os.utime(src / d / f"f{i}", ns=(OLD + i, OLD + i * 1_000_000_001))
    dst.mkdir()
    (dst / "sub").symlink_to(outside)
    (dst / "ok").mkdir()
    (dst / "ok" / "f3").mkdir()
    (dst / "ok" / "f4").symlink_to(outside / "keep")
    before = snapshot(outside, "ns")
    async with container(kind, dst) as client:
        rec = Recording(client)
        with trio.fail_after(60):
            # The destination listing stops sub/* before the container (the mover's own check
            # of a symlink on the way: test_scripts.test_python_mover_never_through_a_symlink).
            report = await memoh_trio.migrate(src, rec, resume=False)  # type: ignore[arg-type]
    assert rec.tar_batches() == [0]
    assert report.status == "incomplete" and report.renamed_to is None
    failed = {f.path for f in report.failures}
    assert failed - {"sub"} == {"ok/f3"} | {f"sub/f{i}" for i in range(12)}, report.failures
    assert snapshot(outside, "ns") == before
    precision = precision_of(kind)
    want, got = snapshot(src, precision), snapshot(dst, precision)
    for d in ("ok", "new/deep/er"):
        for i in range(12):
            rel = f"{d}/f{i}"
            if rel != "ok/f3":
                assert got[rel] == want[rel], rel
    assert temporaries(dst) == []


@pytest.mark.parametrize("kind", ["busybox-python", pytest.param("memoh-go",
                                                                 marks=pytest.mark.memoh_go)])
@pytest.mark.usefixtures("per_step")
async def test_streamed_files_placed_by_the_containers_python3(kind: str,
                                                               tmp_path: Path) -> None:
    # 20 files of 300 KiB streamed once python3 is known: parked, then checked, given their
    # modes and mtimes and renamed by the container's python3, without a Stat or a Rename each.
    src = tmp_path / "src"
    for i in range(40):
        p = src / "small" / f"{i}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(50 + i))
    for i in range(20):
        p = src / "mid" / f"d{i % 3}" / f"f{i}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(300 * 1024 + i))
        p.chmod(0o600 + i % 8)
        os.utime(p, ns=(OLD, OLD + i * 1_000_000_007 + 123_456_789))
    dst = tmp_path / "dst"
    dst.mkdir()
    async with container(kind, dst) as client:
        rec = PythonFirst(client)
        with trio.fail_after(60):
            report = await memoh_trio.migrate(src, rec, concurrency=64)  # type: ignore[arg-type]
    assert report.status == "migrated", (report.failures[:5], report.error)
    assert report.files == 60 and report.mtime_precision == "ns"
    assert rec.stats == rec.renames == 0
    assert snapshot(dst, "ns") == snapshot(tmp_path / "src.migrated", "ns")
    assert temporaries(dst) == []
