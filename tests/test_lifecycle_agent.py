"""The per-file lifecycle carried out by the container's agent (one python3 for the whole run,
spoken to over one Exec: :mod:`memoh_trio._agent`), end to end in Memoh's Go server under
Memoh's bot image (``run-in.sh busybox-python``).

The table is the contract (:mod:`memoh_trio._migrate.lifecycle`); ``test_lifecycle_paths.py``
tests it carried out by a python3 process per step and by the shell, this module by the agent:
the rows each test's runs take (:data:`ROWS`), one Exec for a whole migration, the same ways
every time, conflicts, the agent lost at each kind of step (``PY_LOST``: the shell's or the
per-file way, every file still identical), and a process in the container that swaps a
directory for a symlink while the tree is placed (nothing lands outside the tree; the rerun
migrates).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio
from containertools import check_run, go_container, mixed_tree, tree, ways_of_ten_runs

from memoh_trio._agent.driver import Driver
from memoh_trio._migrate import lifecycle
from memoh_trio._migrate.lifecycle import Event, Phase, Step, Trace

pytestmark = pytest.mark.memoh_go

KIND = "busybox-python"
P, E = Phase, Event
Row = tuple[Phase, Event]

#: test -> the rows its runs take, the agent carrying out python3's rows.
ROWS: dict[str, set[Row]] = {
    "test_first_migration": {(P.TAR, E.OK_META), (P.STREAM, E.SENT), (P.SENT, E.HOLD),
                             (P.HELD, E.OK_META), (P.LINK, E.OK), (P.META, E.OK),
                             (P.MKDIR, E.OK)},
    "test_without_preserve": {(P.TAR, E.OK), (P.HELD, E.OK), (P.MOVED, E.NO_META)},
    "test_conflicts": {(P.TAR, E.REFUSED), (P.HELD, E.REFUSED), (P.LINK, E.REFUSED),
                       (P.MKDIR, E.REFUSED)},
    "test_the_agent_is_lost": {(P.TAR, E.PY_LOST), (P.RESEND, E.SENT), (P.CHECK, E.OK),
                               (P.HELD, E.PY_LOST), (P.RECHECK, E.OK), (P.LINK, E.PY_LOST),
                               (P.LINK_SHELL, E.OK), (P.META, E.PY_LOST),
                               (P.META_SHELL, E.OK)},
    "test_reruns_with_sha256": {(P.HASH, E.OK), (P.HASH, E.LOST), (P.TAR, E.OK_META)},
    "test_sha256_checked_by_the_agent": {(P.TAR, E.OK_META), (P.SENT, E.HOLD),
                                         (P.HELD, E.OK_META), (P.HELD, E.BAD)},
}


def assert_rows(name: str, traces: list[Trace]) -> None:
    taken = set().union(*(t.rows_taken() for t in traces))
    missing = sorted(f"{p.name} --{e.name}->" for p, e in ROWS[name] - taken)
    assert missing == [], f"{name}: rows not taken: {missing}"


#: The agent's stdin cut right after its hello: it answers the hello, then sees the end of its
#: input and ends, every later request unanswered.
CUT_AFTER_HELLO = f'head -c {len(Driver().hello()[1])} | "$REAL" "$@"\n'


async def test_first_migration(tmp_path: Path) -> None:
    """A mixed tree: small files by ``files`` requests, streamed files placed by the agent,
    symlinks, modes and mtimes, an empty directory: all of it over the one Exec that runs the
    agent (no probe, no tar, no ``sync``: the agent flushes); the tree is identical."""
    root = tmp_path / "root"
    root.mkdir()
    src = tmp_path / "src"
    mixed_tree(src)
    async with go_container(tmp_path, KIND, root) as c:
        report = await c.run(src, "d")
    assert report.status == "migrated", (report.failures[:3], report.error)
    assert report.flushed
    check_run(report, src, root / "d")
    assert_rows("test_first_migration", c.traces)
    execs = c.clients[0].execs
    assert len(execs) == 1 and execs[0][0].startswith("exec python3 -S -c "), execs
    assert execs[0][1] == 0
    agent_steps = {Step.TAR_AGENT, Step.PLACE_AGENT, Step.LINK_AGENT, Step.MKDIR_AGENT,
                   Step.META_AGENT, Step.STREAM}
    assert {s for steps in c.traces[0].steps.values() for s in steps} <= agent_steps


async def test_same_tree_same_ways_ten_times(tmp_path: Path) -> None:
    """The same tree into the same container, ten times: every file takes the same steps."""
    ways = await ways_of_ten_runs(tmp_path, KIND)
    placed = [rel for rel, steps in ways.items() if Step.PLACE_AGENT in steps]
    assert len(placed) == 12  # the ten streamed files and two empty ones


async def test_without_preserve(tmp_path: Path) -> None:
    """``preserve=False``: placed files get the plain mode and no metadata step."""
    root = tmp_path / "root"
    root.mkdir()
    src = tmp_path / "src"
    mixed_tree(src)
    async with go_container(tmp_path, KIND, root) as c:
        report = await c.run(src, "d", preserve=False)
    assert report.status == "migrated", (report.failures[:3], report.error)
    assert {oct((root / "d" / "media" / "m03.bin").stat().st_mode & 0o777),
            oct((root / "d" / "notes" / "d0" / "n000.md").stat().st_mode & 0o777)} == {"0o644"}
    assert_rows("test_without_preserve", c.traces)


async def test_conflicts(tmp_path: Path) -> None:
    """The destination holds what is in the way (a directory where a small file, a streamed
    file or a symlink goes; a file where an empty directory goes): those fail, with no
    temporary left; the rest migrates; nothing is renamed; once cleared, the rerun migrates."""
    root = tmp_path / "root"
    root.mkdir()
    src = tmp_path / "src"
    mixed_tree(src)
    dst = root / "d"
    for rel in ("notes/d0/n000.md", "media/m00.bin", "links/l00"):
        (dst / rel / "inside").mkdir(parents=True)
    (dst / "emptydir").write_bytes(b"")
    async with go_container(tmp_path, KIND, root) as c:
        report = await c.run(src, "d")
        assert report.status == "incomplete"
        assert {f.path for f in report.failures} == {
            "notes/d0/n000.md", "media/m00.bin", "links/l00", "emptydir"}, report.failures
        assert sorted(p.name for p in dst.rglob(".memoh-*")) == []
        for rel in ("notes/d0/n000.md", "media/m00.bin", "links/l00"):
            (dst / rel / "inside").rmdir()
            (dst / rel).rmdir()
        (dst / "emptydir").unlink()
        again = await c.run(src, "d")
    assert again.status == "migrated", (again.failures[:3], again.error)
    check_run(again, src, dst)
    assert_rows("test_conflicts", c.traces)


async def test_the_agent_is_lost(tmp_path: Path) -> None:
    """The agent answers its hello, then its input is cut: every request after it is
    ``PY_LOST`` and takes the shell's or the per-file way (small files sent again one by one,
    held files checked and renamed one by one, symlinks and modes/mtimes by the shell, an
    empty directory by ``Mkdir``). Each run has one kind of step the agent would take first;
    every run migrates an identical tree."""
    root = tmp_path / "root"
    root.mkdir()
    srcs = {name: tmp_path / name for name in ("tar", "held", "links", "dirs", "meta")}
    tree(srcs["tar"], small=12)
    tree(srcs["held"], streamed=6)
    tree(srcs["links"], links=10)
    tree(srcs["dirs"], dirs=3)
    tree(srcs["meta"], small=12)
    lost = {"python3": CUT_AFTER_HELLO}
    async with go_container(tmp_path, KIND, root) as c:
        reports = {name: await c.run(src, name, tools=lost)
                   for name, src in srcs.items() if name != "meta"}
        # modes and mtimes first: a rerun over files the destination has (resume: unchanged)
        assert (await c.run(srcs["meta"], "meta", rename=False)).ok
        reports["meta"] = await c.run(srcs["meta"], "meta", tools=lost)
    for name, report in reports.items():
        assert report.status == "migrated", (name, report.failures[:3], report.error)
        check_run(report, srcs[name], root / name)
    assert_rows("test_the_agent_is_lost", c.traces)


async def test_sha256_checked_by_the_agent(tmp_path: Path) -> None:
    """``verify="sha256"``: the agent hashes each file through the descriptor it renames
    (small files after writing them, streamed ones before placing them); a streamed file
    whose bytes were changed in the container after the upload (same size) fails its check
    and is not placed."""
    root = tmp_path / "root"
    root.mkdir()
    src, spoiled = tmp_path / "src", tmp_path / "spoiled"
    mixed_tree(src)
    tree(spoiled, streamed=3)
    async with go_container(tmp_path, KIND, root) as c:
        report = await c.run(src, "d", verify="sha256")
        assert report.status == "migrated", (report.failures[:3], report.error)
        check_run(report, src, root / "d")
        report = await c.run(spoiled, "s", verify="sha256", client=Spoiler(c.client, root / "s"))
    assert report.status == "incomplete"
    check_run(report, spoiled, root / "s")
    assert [f.path for f in report.failures] == ["m/m01"], report.failures
    assert "verification failed" in report.failures[0].error
    assert not (root / "s" / "m" / "m01").exists()
    assert_rows("test_sha256_checked_by_the_agent", c.traces)


async def test_reruns_with_sha256(tmp_path: Path) -> None:
    """A rerun with ``--verify sha256``: the agent hashes what resume would skip (through
    descriptors, never through a symlink), and a file whose bytes differ behind the same size
    and mtime is sent again; the tree is then identical."""
    root = tmp_path / "root"
    root.mkdir()
    src = tmp_path / "src"
    mixed_tree(src)
    async with go_container(tmp_path, KIND, root) as c:
        assert (await c.run(src, "d", rename=False)).ok
        changed = root / "d" / "notes" / "d1" / "n004.md"
        st = changed.stat()
        changed.write_bytes(b"\xff" * st.st_size)
        os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns))
        report = await c.run(src, "d", verify="sha256")
    assert report.status == "migrated", (report.failures[:3], report.error)
    check_run(report, src, root / "d")
    steps = c.traces[-1].steps
    assert Step.HASH_AGENT in steps["notes/d0/n000.md"]
    assert steps["notes/d1/n004.md"][:2] == [Step.HASH_AGENT, Step.STREAM]
    assert len(c.clients[-1].execs) == 1  # still the agent's Exec alone
    assert_rows("test_reruns_with_sha256", c.traces)


class Spoiler:
    """A client that, once ``WriteRaw`` uploaded ``m/m01``'s bytes to its temporary file,
    changes one of them in the container's file system (the size stays)."""

    def __init__(self, client: Any, dest: Path) -> None:
        self._client, self._dest = client, dest

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def write_raw(self, path: str, source: Any, **kw: Any) -> Any:
        result = await self._client.write_raw(path, source, **kw)
        if kw.get("expected_size") == 300 * 1024 + 1:  # m/m01's size (tree())
            await trio.to_thread.run_sync(spoil, self._dest.parent / path)
        return result


def spoil(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\xee")


async def test_a_directory_swapped_for_a_symlink_during_the_migration(tmp_path: Path) -> None:
    """A process in the container waits until the first file is placed in a directory of the
    destination, then swaps that directory for a symlink to a directory outside the tree,
    while 600 small and 6 streamed files are still to be placed there (issue 25: 5306aab
    wrote files through it into the symlink's target). Nothing lands outside the tree, the
    files still to be placed fail ("a symlink is in the way"), nothing is renamed; with the
    directory put back, the rerun migrates an identical tree."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "passwd").write_bytes(b"root:x:0:0\n")
    src = tmp_path / "src"
    for i in range(600):
        p = src / "d" / f"s{i % 7}" / f"n{i:03d}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b'{"n": %d}' % i * 20)
    for i in range(6):
        (src / "d" / f"big{i}.bin").write_bytes(os.urandom(300 * 1024))
    # python3 in the container (Memoh's image has it): renameat2(RENAME_EXCHANGE) swaps the
    # directory and a symlink at once, so the directory is never missing in between.
    swapper = ("exec python3 -c 'import ctypes, os\n"
               "libc = ctypes.CDLL(None, use_errno=True)\n"
               f"os.chdir(\"bot\"); os.symlink(\"{outside}\", \"d.x\")\n"
               "while not os.path.exists(\"d/s0/n000.json\"): pass\n"
               "assert libc.renameat2(-100, b\"d\", -100, b\"d.x\", 2) == 0\n"
               "print(\"swapped\")'")
    async with go_container(tmp_path, KIND, root) as c:
        (root / "bot" / "d").mkdir(parents=True)
        swapped: list[bytes] = []

        async def hostile() -> None:
            swapped.append((await c.client.exec(swapper)).stdout)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hostile)
                report = await c.run(src, "bot")
        assert swapped == [b"swapped\n"]
        assert sorted(p.name for p in outside.iterdir()) == ["passwd"]
        assert (outside / "passwd").read_bytes() == b"root:x:0:0\n"
        assert report.status == "incomplete" and not (tmp_path / "src.migrated").exists()
        placed = [p for p in (root / "bot" / "d.x").rglob("*") if p.is_file()
                  and not p.name.startswith(".memoh-")]
        assert placed  # placed before the swap, and moved aside with it: each one whole
        for p in placed:
            assert p.read_bytes() == (src / "d" / p.relative_to(root / "bot" / "d.x")
                                      ).read_bytes(), p
        # what was still to be placed there failed (a symlink in the way; the directory
        # missing or replaced, caught between the move and the link)
        assert report.failures and all(f.path.startswith("d") for f in report.failures)
        (root / "bot" / "d").unlink()
        (root / "bot" / "d.x").rename(root / "bot" / "d")
        again = await c.run(src, "bot")
    assert again.status == "migrated", (again.failures[:3], again.error)
    check_run(again, src, root / "bot")
    assert sorted(p.name for p in outside.iterdir()) == ["passwd"]


def test_every_agent_row_is_a_row_of_the_table() -> None:
    """The rows named here are the table's (the agent adds none)."""
    for rows in ROWS.values():
        assert rows <= set(lifecycle.TABLE)
