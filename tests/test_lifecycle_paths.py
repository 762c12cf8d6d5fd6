"""Every row of the per-file lifecycle (:data:`memoh_trio._migrate.lifecycle.TABLE`), end to end
against Memoh's Go server under Memoh's bot image (``run-in.sh busybox-python``: busybox's tools
and python3) and under plain ``busybox``: each test asserts, from its runs' traces
(:func:`memoh_trio._migrate.lifecycle.tracing`), that its files took the rows it names in
:data:`ROWS` (under both kinds) and :data:`ROWS_PYTHON` / :data:`ROWS_BUSYBOX` (under one).
``test_lifecycle.py::test_every_row_has_an_end_to_end_test`` checks that each row of the table
is named here. Faults come from wrappers first on the Exec's ``PATH`` (:mod:`containertools`),
from the destination holding something in the way, or from the test's client (a temporary
file removed before its check) and progress observer (a source file changed once walked).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio
from containertools import (
    PY_PROBE,
    Container,
    WithPath,
    check_run,
    fault_path,
    mixed_tree,
    snapshot,
    tree,
    ways_of_ten_runs,
)
from peers import TEST_TOKEN, memoh_go_server, memoh_trio_server

import memoh_trio
from memoh_trio._migrate import lifecycle, meta
from memoh_trio._migrate.lifecycle import Event, Phase, Trace

KINDS = ("busybox-python", "busybox")
P, E = Phase, Event
Row = tuple[Phase, Event]

#: test -> the rows its runs take under both kinds.
ROWS: dict[str, set[Row]] = {
    "test_first_migration": {(P.STREAM, E.SENT), (P.META, E.OK), (P.LINK, E.OK),
                             (P.MKDIR, E.OK)},
    "test_a_few_streamed_files": {(P.SENT, E.HOLD), (P.HELD, E.PER_FILE), (P.CHECK, E.OK)},
    "test_without_preserve": {(P.TAR, E.OK), (P.MOVED, E.NO_META)},
    "test_reruns": {(P.UNCHANGED, E.NO_META), (P.UNCHANGED, E.META_DUE), (P.HASH, E.OK),
                    (P.HASH, E.LOST), (P.SENT, E.CHECK), (P.CHECK, E.OK),
                    (P.MOVED, E.META_DUE)},
    "test_conflicts": {(P.TAR, E.REFUSED), (P.LINK, E.REFUSED), (P.MKDIR, E.REFUSED),
                       (P.STREAM, E.REFUSED), (P.CHECK, E.REFUSED)},
    "test_tar_fails": {(P.TAR, E.LOST), (P.RESEND, E.SENT), (P.RESEND, E.REFUSED)},
    "test_python3_crashes": {(P.TAR, E.PY_LOST), (P.HELD, E.PY_LOST), (P.RECHECK, E.OK),
                             (P.LINK, E.PY_LOST), (P.LINK_SHELL, E.OK),
                             (P.LINK_SHELL, E.REFUSED), (P.META, E.PY_LOST),
                             (P.META_SHELL, E.OK), (P.RECHECK, E.REFUSED)},
    "test_corrupted_in_the_container": {(P.TAR, E.BAD), (P.CHECK, E.BAD), (P.RECHECK, E.BAD)},
    "test_the_containers_shell_dies": {(P.META, E.LOST), (P.LINK, E.LOST),
                                       (P.META_SHELL, E.LOST), (P.LINK_SHELL, E.LOST),
                                       (P.META_SHELL, E.REFUSED), (P.META, E.REFUSED)},
    "test_a_file_changes_or_vanishes": {(P.TAR, E.CHANGED), (P.CHECK, E.GONE)},
}
#: test -> the rows its runs take under busybox-python only (python3 is really there).
ROWS_PYTHON: dict[str, set[Row]] = {
    "test_first_migration": {(P.TAR, E.OK_META), (P.SENT, E.HOLD), (P.HELD, E.OK_META)},
    "test_without_preserve": {(P.HELD, E.OK)},
    "test_conflicts": {(P.HELD, E.REFUSED)},
    "test_python3_crashes": {(P.RECHECK, E.GONE)},
    "test_corrupted_in_the_container": {(P.HELD, E.BAD)},
}
#: test -> the rows its runs take under busybox only.
ROWS_BUSYBOX: dict[str, set[Row]] = {}


@pytest.fixture(autouse=True)
def python3_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """This module is the table carried out by a python3 process per step (and the shell),
    as where the agent cannot start; ``test_lifecycle_agent.py`` is the agent's."""
    monkeypatch.setattr(meta, "USE_AGENT", False)


def assert_rows(name: str, kind: str, traces: list[Trace]) -> None:
    want = ROWS[name] | (ROWS_PYTHON if kind == "busybox-python" else ROWS_BUSYBOX).get(
        name, set())
    taken = set().union(*(t.rows_taken() for t in traces))
    missing = sorted(f"{p.name} --{e.name}->" for p, e in want - taken)
    assert missing == [], f"{name} under {kind}: rows not taken: {missing}"


#: python3 killed at once (it answers the probe: there, run as this wrapper).
PY_CRASH = PY_PROBE + "kill -9 $$\n"
#: python3 absent (the probe finds none).
PY_ABSENT = "exit 127\n"
#: a tool that kills the shell running it (the script's shell dies mid-way, no records).
KILL_SHELL = ('case "$*" in *memoh-probe*) exec "$REAL" "$@";; esac\n'  # not the probe's
              "kill -9 $PPID\n")


@pytest.mark.memoh_go
@pytest.mark.parametrize("kind", KINDS)
async def test_first_migration(kind: str, tmp_path: Path) -> None:
    """A first migration of a mixed tree (a tar batch, streamed files, symlinks, empty files,
    an empty directory): every file goes its first way; the tree is identical."""
    root = tmp_path / "root"
    root.mkdir()
    src = tmp_path / "src"
    mixed_tree(src)
    async with memoh_go_server(root, kind=kind) as peer, \
            memoh_trio.connect(peer.target) as client:
        c = Container(client, kind, tmp_path, root)
        report = await c.run(src, "d")
    assert report.status == "migrated", (report.failures[:3], report.error)
    check_run(report, src, root / "d")
    assert_rows("test_first_migration", kind, c.traces)


@pytest.mark.memoh_go
@pytest.mark.parametrize("kind", KINDS)
async def test_same_tree_same_ways_ten_times(kind: str, tmp_path: Path) -> None:
    """The same tree into the same container, ten times: every file takes the same container
    steps each time (the way is chosen from what is known, not from which task finished
    first; 5306aab parked a streamed file or gave it a Stat and a Rename depending on whether
    python3's answer came before its last byte)."""
    ways = await ways_of_ten_runs(tmp_path, kind)
    held = [rel for rel, steps in ways.items()
            if lifecycle.Step.PLACE_PYTHON in steps]
    if kind == "busybox-python":
        assert len(held) == 12  # the ten streamed files and two empty ones, by python3
    else:
        assert held == []


@pytest.mark.memoh_go
@pytest.mark.parametrize("kind", KINDS)
async def test_a_few_streamed_files(kind: str, tmp_path: Path) -> None:
    """Four streamed files and nothing else: held until the last stream ends, then each gets a
    Stat and a Rename (python3 is not started for so few)."""
    root = tmp_path / "root"
    root.mkdir()
    src = tmp_path / "src"
    tree(src, streamed=4)
    async with memoh_go_server(root, kind=kind) as peer, \
            memoh_trio.connect(peer.target) as client:
        c = Container(client, kind, tmp_path, root)
        report = await c.run(src, "d")
    assert report.status == "migrated", (report.failures[:3], report.error)
    check_run(report, src, root / "d")
    assert_rows("test_a_few_streamed_files", kind, c.traces)
    steps = c.traces[0].steps
    assert all(steps[f"m/m{i:02d}"][:2] == [lifecycle.Step.STREAM, lifecycle.Step.STAT_RENAME]
               for i in range(4)), steps


@pytest.mark.memoh_go
@pytest.mark.parametrize("kind", KINDS)
async def test_without_preserve(kind: str, tmp_path: Path) -> None:
    """``preserve=False``: moved and placed files get no modes and mtimes step."""
    root = tmp_path / "root"
    root.mkdir()
    src = tmp_path / "src"
    mixed_tree(src)
    async with memoh_go_server(root, kind=kind) as peer, \
            memoh_trio.connect(peer.target) as client:
        c = Container(client, kind, tmp_path, root)
        report = await c.run(src, "d", preserve=False)
    assert report.status == "migrated", (report.failures[:3], report.error)
    want = snapshot(tmp_path / "src.migrated", None)
    got = snapshot(root / "d", None)
    assert {k: v[3:] for k, v in got.items()} == {k: v[3:] for k, v in want.items()}
    assert_rows("test_without_preserve", kind, c.traces)


@pytest.mark.memoh_go
@pytest.mark.parametrize("kind", KINDS)
async def test_reruns(kind: str, tmp_path: Path) -> None:
    """Reruns: resume's quick check (with and without modes and mtimes), then ``--verify
    sha256``, which hashes what resume would skip and sends again a file whose contents differ
    behind the same size and mtime."""
    root = tmp_path / "root"
    root.mkdir()
    src = tmp_path / "src"
    mixed_tree(src)
    async with memoh_go_server(root, kind=kind) as peer, \
            memoh_trio.connect(peer.target) as client:
        c = Container(client, kind, tmp_path, root)
        assert (await c.run(src, "d", rename=False)).ok
        assert (await c.run(src, "d", rename=False, preserve=False)).ok
        assert (await c.run(src, "d", rename=False)).ok
        changed = root / "d" / "media" / "m03.bin"
        st = changed.stat()
        changed.write_bytes(b"\xff" * st.st_size)
        os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns))
        report = await c.run(src, "d", verify="sha256")
    assert report.status == "migrated", (report.failures[:3], report.error)
    check_run(report, src, root / "d")
    assert_rows("test_reruns", kind, c.traces)


@pytest.mark.memoh_go
@pytest.mark.parametrize("kind", KINDS)
async def test_conflicts(kind: str, tmp_path: Path) -> None:
    """The destination holds what is in the way: a directory where a small file, a streamed
    file or a symlink goes, a file where an empty directory goes, a file where a streamed
    file's directory goes. Those entries fail; the others migrate; nothing is renamed."""
    root = tmp_path / "root"
    root.mkdir()
    src = tmp_path / "src"
    mixed_tree(src)
    (src / "media2").mkdir()
    (src / "media2" / "x.bin").write_bytes(b"x" * 300 * 1024)
    dst = root / "d"
    for rel in ("notes/d0/n000.md", "media/m00.bin", "links/l00"):
        (dst / rel / "inside").mkdir(parents=True)
    (dst / "emptydir").write_bytes(b"")
    (dst / "media2").write_bytes(b"")
    async with memoh_go_server(root, kind=kind) as peer, \
            memoh_trio.connect(peer.target) as client:
        c = Container(client, kind, tmp_path, root)
        report = await c.run(src, "d")
        # The same with --verify sha256 (streamed files are checked one by one).
        src2 = tmp_path / "src2"
        mixed_tree(src2)
        (dst.parent / "e" / "media" / "m01.bin" / "inside").mkdir(parents=True)
        report2 = await c.run(src2, "e", verify="sha256")
    assert report.status == "incomplete" and report2.status == "incomplete"
    failed = {f.path for f in report.failures}
    assert {"notes/d0/n000.md", "media/m00.bin", "links/l00", "emptydir",
            "media2/x.bin"} <= failed, report.failures
    assert {f.path for f in report2.failures} == {"media/m01.bin"}, report2.failures
    assert_rows("test_conflicts", kind, c.traces)


@pytest.mark.memoh_go
@pytest.mark.parametrize("kind", KINDS)
async def test_tar_fails(kind: str, tmp_path: Path) -> None:
    """tar fails in the container: the batch's files are sent again one by one (and one whose
    directory is a file at the destination fails there)."""
    root = tmp_path / "root"
    root.mkdir()
    src = tmp_path / "src"
    tree(src, small=12)
    (src / "x").mkdir()
    (src / "x" / "y").write_bytes(b"y")
    (root / "d").mkdir()
    (root / "d" / "x").write_bytes(b"")
    tools = {"tar": "echo 'tar: broken' >&2\nexit 2\n"}
    async with memoh_go_server(root, kind=kind) as peer, \
            memoh_trio.connect(peer.target) as client:
        c = Container(client, kind, tmp_path, root)
        report = await c.run(src, "d", tools=tools)
    assert report.status == "incomplete"
    assert [f.path for f in report.failures] == ["x/y"], report.failures
    for i in range(12):
        assert (root / "d" / "s" / f"s{i:02d}").read_bytes() == b"small %d\n" % i
    assert_rows("test_tar_fails", kind, c.traces)


@pytest.mark.memoh_go
@pytest.mark.parametrize("kind", KINDS)
async def test_python3_crashes(kind: str, tmp_path: Path) -> None:
    """python3 answers the probe, then dies in each step it is given (at once; under
    busybox-python also after its work, before its records): the tar batch is sent again file
    by file, held files are checked and renamed one by one (or sent again where python3 had
    moved them), symlinks and modes/mtimes take the shell's way; python3 is not used again.
    Each run has one kind of step python3 would take, so that its crash comes first there."""
    root = tmp_path / "root"
    root.mkdir()
    srcs = {name: tmp_path / name for name in ("tar", "held", "links", "meta", "late")}
    tree(srcs["tar"], small=12)
    tree(srcs["held"], streamed=10)
    tree(srcs["links"], links=10)
    tree(srcs["meta"], small=3, dirs=10)
    tree(srcs["late"], streamed=10)
    (root / "links" / "l" / "l01" / "inside").mkdir(parents=True)  # in the shell's way too
    (root / "held" / "m" / "m02" / "inside").mkdir(parents=True)
    late = PY_PROBE + '"$REAL" "$@"\nkill -9 $$\n'
    async with memoh_go_server(root, kind=kind) as peer, \
            memoh_trio.connect(peer.target) as client:
        c = Container(client, kind, tmp_path, root)
        reports = {name: await c.run(src, name, tools={"python3": PY_CRASH})
                   for name, src in srcs.items() if name != "late"}
        if kind == "busybox-python":
            reports["late"] = await c.run(srcs["late"], "late", tools={"python3": late})
    for name, report in reports.items():
        if name in ("links", "held"):
            assert report.status == "incomplete"
            assert [f.path for f in report.failures] == (
                ["l/l01"] if name == "links" else ["m/m02"]), report.failures
        else:
            assert report.status == "migrated", (name, report.failures[:3], report.error)
            check_run(report, srcs[name], root / name)
    assert_rows("test_python3_crashes", kind, c.traces)


@pytest.mark.memoh_go
@pytest.mark.parametrize("kind", KINDS)
async def test_corrupted_in_the_container(kind: str, tmp_path: Path) -> None:
    """Something in the container changes the bytes sent before they are checked: a staged
    tar member, a held file (before python3 checks it, or before the per-file check after
    python3 died), a streamed file before ``sha256sum``. Those files fail, nothing torn is at
    a final path, nothing is renamed."""
    root = tmp_path / "root"
    root.mkdir()
    srcs = {name: tmp_path / name for name in ("tar", "held", "recheck", "sha")}
    tree(srcs["tar"], small=12)
    for name in ("held", "recheck", "sha"):
        tree(srcs[name], streamed=10)
    spoil = "find . -name '.memoh-part-*' -type f -exec sh -c 'echo x >> \"$1\"' _ {} \\;\n"
    tar_spoil = ('"$REAL" "$@" || exit $?\n'
                 "find . -path './.memoh-tar-*' -type f -name 's*' "
                 "-exec sh -c 'echo x >> \"$1\"' _ {} \\;\n")
    runs: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
        "tar": ({"tar": tar_spoil}, {}),
        "recheck": ({"python3": PY_PROBE + spoil + "kill -9 $$\n"}, {}),
        # the file it hashes (its last argument), which the client keeps until it answers
        "sha": ({"sha256sum": 'eval f=\\"\\${$#}\\"\necho x >> "$f"\nexec "$REAL" "$@"\n'},
                {"verify": "sha256"}),
    }
    if kind == "busybox-python":
        runs["held"] = ({"python3": PY_PROBE + spoil + 'exec "$REAL" "$@"\n'}, {})
    async with memoh_go_server(root, kind=kind) as peer, \
            memoh_trio.connect(peer.target) as client:
        c = Container(client, kind, tmp_path, root)
        for name, (tools, kw) in runs.items():
            report = await c.run(srcs[name], name, tools=tools, **kw)
            assert report.status == "incomplete", name
            check_run(report, srcs[name], root / name)
            files = [f for f in report.failures if f.path not in ("s", "m")]  # + their dirs
            assert files and all(
                "verification failed" in f.error or "holds" in f.error
                or "mismatch" in f.error for f in files), report.failures
    assert_rows("test_corrupted_in_the_container", kind, c.traces)


@pytest.mark.memoh_go
@pytest.mark.parametrize("kind", KINDS)
async def test_the_containers_shell_dies(kind: str, tmp_path: Path) -> None:
    """The shell running a step dies mid-way (its ``touch``/``ln`` kills it): no record, the
    entries fail (python3 absent), or python3 crashed first and the shell's way dies too; a
    ``chmod`` that fails fails its entries. Nothing is renamed; a clean rerun migrates."""
    root = tmp_path / "root"
    root.mkdir()
    runs = {
        "meta": ({"python3": PY_ABSENT, "touch": KILL_SHELL}, {"small": 3}),
        "links": ({"python3": PY_ABSENT, "ln": KILL_SHELL}, {"links": 3}),
        "meta2": ({"python3": PY_CRASH, "touch": KILL_SHELL}, {"small": 3, "dirs": 10}),
        "links2": ({"python3": PY_CRASH, "ln": KILL_SHELL}, {"links": 10}),
        "chmod": ({"python3": PY_ABSENT, "chmod": "exit 1\n"}, {"small": 3}),
        "chmod2": ({"python3": PY_CRASH, "chmod": "exit 1\n"}, {"small": 3, "dirs": 10}),
    }
    async with memoh_go_server(root, kind=kind) as peer, \
            memoh_trio.connect(peer.target) as client:
        c = Container(client, kind, tmp_path, root)
        for name, (tools, shape) in runs.items():
            src = tmp_path / name
            tree(src, **shape)
            report = await c.run(src, name, tools=tools)
            assert report.status == "incomplete", name
            check_run(report, src, root / name)
            report = await c.run(src, name)
            assert report.status == "migrated", (name, report.failures[:3])
    assert_rows("test_the_containers_shell_dies", kind, c.traces)


class _ChangesOnceWalked(memoh_trio.Progress):
    """A progress observer that changes a source file once the walk found it (before a tar
    batch reads it)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def found(self, files: int, nbytes: int) -> None:
        super().found(files, nbytes)
        if self.path.exists():
            st = self.path.stat()
            os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


class _TemporaryRemoved:
    """A client whose ``Stat`` of a temporary file finds it removed (a process in the
    container deleted it between the upload and the check)."""

    def __init__(self, client: Any, root: Path) -> None:
        self._client, self._root = client, root

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def stat(self, path: str) -> Any:
        if ".memoh-part-" in path:
            (self._root / path).unlink(missing_ok=True)
        return await self._client.stat(path)


@pytest.mark.memoh_go
@pytest.mark.parametrize("kind", KINDS)
async def test_a_file_changes_or_vanishes(kind: str, tmp_path: Path) -> None:
    """A small file changes once walked: its tar batch hands it to the per-file way, which
    fails it (it is not the file the walk saw). A temporary file vanishes in the container
    before its check: that file fails. Nothing is renamed."""
    root = tmp_path / "root"
    root.mkdir()
    src = tmp_path / "src"
    tree(src, small=12)
    src2 = tmp_path / "src2"
    tree(src2, streamed=3)
    async with memoh_go_server(root, kind=kind) as peer, \
            memoh_trio.connect(peer.target) as client:
        c = Container(client, kind, tmp_path, root)
        report = await c.run(src, "d", progress=_ChangesOnceWalked(src / "s" / "s05"))
        report2 = await c.run(src2, "e", client=_TemporaryRemoved(client, root))
    assert report.status == "incomplete"
    assert [f.path for f in report.failures] == ["s/s05"], report.failures
    assert report2.status == "incomplete" and len(report2.failures) == 3
    assert all("missing" in f.error for f in report2.failures), report2.failures
    assert_rows("test_a_file_changes_or_vanishes", kind, c.traces)


def small_tree(src: Path, n: int = 4, size: int = 300 * 1024) -> dict[str, bytes]:
    files = {f"d{i % 2}/f{i}": bytes([i + 1]) * (size + i) for i in range(n)}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    return files


async def test_sha256_into_a_server_without_exec(tmp_path: Path) -> None:
    """``--verify sha256`` into ``memoh-trio serve --no-exec``: the container cannot hash, so
    each temporary file is read back (ReadRaw) and hashed here; every file migrates (5306aab:
    each failed with "TypeError: 'coroutine' object does not support the asynchronous context
    manager protocol", the deadline proxy wrapping ``Client.read_raw``)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = small_tree(src)
    dst.mkdir()
    async with memoh_trio_server(dst, "--no-exec") as peer, \
            memoh_trio.connect(peer.target, token=TEST_TOKEN) as client:
        with trio.fail_after(60):
            report = await memoh_trio.migrate(src, client, verify="sha256", preserve=False,
                                              rename_without_flush=True)
    assert report.status == "migrated", (report.failures[:3], report.error)
    for rel, data in files.items():
        assert (dst / rel).read_bytes() == data


@pytest.mark.memoh_go
@pytest.mark.parametrize("kind", KINDS)
async def test_sha256_where_sha256sum_fails(kind: str, tmp_path: Path) -> None:
    """``--verify sha256`` into Memoh's server where ``sha256sum`` fails: read back and hashed
    here (5306aab: every file failed with the TypeError above)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    mixed_tree(src)
    dst.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sha256sum").write_text("#!/bin/sh\necho 'sha256sum: broken' >&2\nexit 1\n")
    (bin_dir / "sha256sum").chmod(0o755)
    async with memoh_go_server(dst, kind=kind) as peer, \
            memoh_trio.connect(peer.target) as client:
        rec = WithPath(client, f"{bin_dir}:{fault_path(tmp_path, kind, None)}")
        with trio.fail_after(120):
            report = await memoh_trio.migrate(src, rec, verify="sha256")  # type: ignore[arg-type]
    assert report.status == "migrated", (report.failures[:3], report.error)
    check_run(report, tmp_path / "src", dst)
