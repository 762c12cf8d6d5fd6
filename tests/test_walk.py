"""The streaming walk: every entry once, links not followed, errors reported, streaming."""
# ruff: noqa: ASYNC230  (tests build small local trees synchronously, on purpose)

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio
from conftest import unprivileged
from hypothesis import given, settings
from hypothesis import strategies as st

from memoh_trio._plan import WalkEntry
from memoh_trio._walk import Walker, walk


async def collect(root: Path, batch_size: int = 256) -> dict[str, WalkEntry]:
    send, recv = trio.open_memory_channel[list[WalkEntry]](0)
    out: dict[str, WalkEntry] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: walk(root, send, batch_size=batch_size))
        async with recv:
            async for entries in recv:
                assert 0 < len(entries) <= batch_size
                for entry in entries:
                    assert entry.rel not in out, f"{entry.rel} seen twice"
                    out[entry.rel] = entry
    return out


async def test_walk_reports_every_entry_once(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f.txt").write_text("hi")
    (tmp_path / "a" / "empty").mkdir()
    (tmp_path / "top").write_bytes(b"")
    (tmp_path / "link").symlink_to("a")
    os.mkfifo(tmp_path / "pipe")
    got = await collect(tmp_path, batch_size=1)
    assert set(got) == {"a", "a/b", "a/b/f.txt", "a/empty", "top", "link", "pipe"}
    assert got["a/empty"].empty_dir and not got["a"].empty_dir and not got["a/b"].empty_dir
    assert got["link"].link_target == "a"
    st_link = got["link"].st
    assert st_link is not None and stat.S_ISLNK(st_link.st_mode)
    assert all(e.error is None for e in got.values())
    assert got["a/b/f.txt"].host_path == str(tmp_path / "a" / "b" / "f.txt")


async def test_symlinked_directory_is_not_descended(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x").write_text("x")
    (tmp_path / "loop").symlink_to(".")
    got = await collect(tmp_path)
    assert set(got) == {"real", "real/x", "loop"}


async def test_directories_come_before_their_contents(tmp_path: Path) -> None:
    (tmp_path / "d1" / "d2").mkdir(parents=True)
    (tmp_path / "d1" / "d2" / "f").write_text("x")
    send, recv = trio.open_memory_channel[list[WalkEntry]](100)
    await walk(tmp_path, send, batch_size=2)
    order = [e.rel async for entries in recv for e in entries]
    assert order.index("d1") < order.index("d1/d2") < order.index("d1/d2/f")


@unprivileged
async def test_unreadable_directory_is_an_error_entry(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "secret").write_text("x")
    locked.chmod(0)
    try:
        got = await collect(tmp_path)
    finally:
        locked.chmod(0o755)
    assert isinstance(got["locked"].error, PermissionError)
    assert "locked/secret" not in got


def test_entry_vanishing_mid_walk_is_an_error_entry(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    w = Walker(str(tmp_path))
    assert [e.rel for e in w.next_batch(1)] == ["d"]
    (tmp_path / "d" / "f").unlink()  # listed by scandir already, gone before its lstat
    rest = w.next_batch(10)
    w.close()
    assert [e.rel for e in rest] == ["d/f"]
    assert isinstance(rest[0].error, FileNotFoundError)


async def test_missing_root_is_one_error_entry(tmp_path: Path) -> None:
    got = await collect(tmp_path / "nope")
    assert list(got) == [""]
    assert isinstance(got[""].error, FileNotFoundError)


async def test_non_utf8_names_are_walked(tmp_path: Path) -> None:
    raw = os.fsencode(str(tmp_path)) + b"/\xff\xfe"
    os.mkdir(raw)
    with open(raw + b"/in", "wb"):
        pass
    got = await collect(tmp_path)
    assert set(map(os.fsencode, got)) == {b"\xff\xfe", b"\xff\xfe/in"}


async def test_walk_streams_before_it_finishes(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"f{i}").write_text("x")
    send, recv = trio.open_memory_channel[list[WalkEntry]](0)
    walker_done = trio.Event()

    async def run() -> None:
        await walk(tmp_path, send, batch_size=4)
        walker_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        first = await recv.receive()
        assert len(first) == 4 and all(e.rel.startswith("f") for e in first)
        assert not walker_done.is_set()  # backpressure: the walk waits for the consumer
        nursery.cancel_scope.cancel()


def test_walker_close_releases_directories(tmp_path: Path) -> None:
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "f").write_text("x")
    w = Walker(str(tmp_path))
    assert w.next_batch(2)
    w.close()
    w.close()


def test_deep_tree(tmp_path: Path) -> None:
    path = tmp_path
    for _ in range(200):
        path = path / "d"
    path.mkdir(parents=True)
    (path / "leaf").write_text("x")
    w = Walker(str(tmp_path))
    entries: list[WalkEntry] = []
    while batch := w.next_batch(64):
        entries.extend(batch)
    assert len(entries) == 201
    assert entries[-1].rel == "/".join(["d"] * 200) + "/leaf"


names = st.text(alphabet="abcXYZ.-_ ", min_size=1, max_size=6).filter(
    lambda s: s not in {".", ".."})
trees = st.recursive(
    st.binary(max_size=8),
    lambda children: st.dictionaries(names, children, max_size=4),
    max_leaves=12,
)


def build(root: Path, tree: object, rel: str = "") -> set[str]:
    made: set[str] = set()
    assert isinstance(tree, dict)
    for name, sub in tree.items():
        path = root / name
        r = f"{rel}/{name}" if rel else name
        made.add(r)
        if isinstance(sub, dict):
            path.mkdir()
            made |= build(path, sub, r)
        else:
            path.write_bytes(sub)
    return made


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(names, trees, max_size=5), st.integers(1, 5))
def test_walk_matches_tree(tmp_path_factory: pytest.TempPathFactory, tree: dict[str, object],
                           batch_size: int) -> None:
    root = tmp_path_factory.mktemp("tree")
    expected = build(root, tree)
    got = trio.run(collect, root, batch_size)
    assert set(got) == expected


@pytest.mark.parametrize("swap", ["symlink", "other-dir"])
def test_directory_swapped_between_lstat_and_listing_is_not_listed(tmp_path: Path,
                                                                   swap: str) -> None:
    """A directory replaced (by a symlink to a directory outside the tree, or by another
    directory) after its ``lstat`` and before it is listed is an error entry: nothing outside
    the tree is ever listed through it."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    st_d = os.lstat(src / "d")
    (src / "d").rename(tmp_path / "aside")
    if swap == "symlink":
        (src / "d").symlink_to(outside)
    else:
        outside.rename(src / "d")
    w = Walker(str(src))
    root_fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        level, _empty, err = w._open_dir("d", "d", root_fd, st_d)
    finally:
        os.close(root_fd)
    assert level is None and err is not None
    assert "replaced" in str(err)


async def test_walk_lists_through_descriptors(tmp_path: Path) -> None:
    """The walk's ``lstat`` results are those of the entries inside the tree (by descriptor)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"12345")
    got = await collect(tmp_path)
    st_f = got["a/f"].st
    assert st_f is not None and st_f.st_ino == os.lstat(tmp_path / "a" / "f").st_ino
    assert st_f.st_size == 5
