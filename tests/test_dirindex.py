"""The compact destination index (issue 23, item 10): pure, no sockets. Checked against what it
replaces (a :class:`memoh_trio.FileEntry` per path and resume's old quick check), against the
generated ListDirResponse, and for what it holds per file."""

from __future__ import annotations

import stat
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memoh_trio import FileEntry
from memoh_trio._dirindex import DirIndex, Listed, mtime_seconds
from memoh_trio._fs.read import go_mode_string, rfc3339
from memoh_trio._proto.mcpcontainer import FileEntry as PbFileEntry
from memoh_trio._proto.mcpcontainer import ListDirResponse
from memoh_trio._wire import ListDirIndex, decode_list_dir

_TYPES = [stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK,
          stat.S_IFSOCK]
_NAME = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=["Cs"]),
                min_size=1, max_size=12)
_PATH = st.lists(_NAME, min_size=1, max_size=4).map("/".join)
_MODE = st.one_of(
    st.tuples(st.sampled_from(_TYPES), st.integers(0, 0o7777)).map(lambda t: go_mode_string(
        t[0] | t[1])),
    st.text(max_size=12),  # whatever a server may send
)
_TIME = st.one_of(st.integers(-(2**34), 2**34).map(rfc3339), st.text(max_size=25))
_SIZE = st.one_of(st.integers(0, 10**6), st.integers(-(2**63), 2**63 - 1))


def old_unchanged(e: FileEntry | None, size: int, mtime_ns: int) -> bool:
    """Resume's quick check on FileEntry objects (as fixed for item 3)."""
    if e is None or not e.is_regular or e.size != size:
        return False
    return mtime_seconds(e.mod_time) == mtime_ns // 1_000_000_000


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_PATH, st.tuples(st.booleans(), _SIZE, _MODE, _TIME), max_size=15),
       st.data())
def test_same_answers_as_file_entries(listing: dict[str, tuple[bool, int, str, str]],
                                      data: st.DataObject) -> None:
    entries = [(p, d, n, m, t) for p, (d, n, m, t) in listing.items()]
    index = DirIndex.from_entries(entries)
    assert len(index) == len(listing) and set(index) == set(listing)
    objects = {p: FileEntry(p, d, n, m, t) for p, d, n, m, t in entries}
    assert index.links() == {p for p, e in objects.items() if e.mode.startswith("L")}
    for rel, e in objects.items():
        got = index.get(rel)
        assert got is not None and rel in index
        assert got.is_dir == e.is_dir and got.is_regular == (e.is_regular and e.size >= 0)
        if e.size >= 0:
            assert got.size == e.size
        when = mtime_seconds(e.mod_time)
        assert got.mtime_seconds == (when if when is not None and abs(when) < 2**39 else None)
        # the quick check, for the entry's own size and time and for others
        sizes = [e.size, data.draw(_SIZE)]
        times = [(when or 0) * 10**9 + 999_999_999, data.draw(st.integers(-(2**60), 2**60))]
        for size in sizes:
            for mtime_ns in times:
                assert index.unchanged(rel, size, mtime_ns) == (
                    old_unchanged(e, size, mtime_ns) and e.size >= 0), (e, size, mtime_ns)
    assert index.get("not/there") is None and not index.unchanged("not/there", 0, 0)


def test_discard_and_examples() -> None:
    t = rfc3339(1_600_000_000)
    index = DirIndex.from_entries([
        ("/a.txt", False, 5, "-rw-r--r--", t), ("d", True, 4096, "drwxr-xr-x", t),
        ("d/l", False, 9, "Lrwxrwxrwx", t), ("d/p", False, 0, "prw-r--r--", t),
        ("d/e/x", False, 3, "urwxr-xr-x", "not a time"),
    ])
    assert index.get("a.txt") == Listed(False, True, False, 5, 1_600_000_000)
    assert index.unchanged("a.txt", 5, 1_600_000_000_999_999_999)
    assert not index.unchanged("a.txt", 5, 1_600_000_001 * 10**9)
    assert not index.unchanged("d/l", 9, 1_600_000_000 * 10**9)  # a symlink is not the file
    assert not index.unchanged("d/p", 0, 1_600_000_000 * 10**9)  # nor a FIFO
    assert not index.unchanged("d/e/x", 3, 0)  # no time known: not vouched for
    assert index.links() == {"d/l"}
    index.discard("d/l")
    index.discard("d/l")
    index.discard("never")
    assert len(index) == 4 and "d/l" not in index and index.links() == set()
    assert sorted(index) == ["a.txt", "d", "d/e/x", "d/p"]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_PATH, st.tuples(st.booleans(), _SIZE, _MODE, _TIME), max_size=15))
def test_decoded_straight_from_the_generated_message(
        listing: dict[str, tuple[bool, int, str, str]]) -> None:
    message = bytes(ListDirResponse(entries=[
        PbFileEntry(path=p, is_dir=d, size=n, mode=m, mod_time=t)
        for p, (d, n, m, t) in listing.items()]))
    got = ListDirIndex.FromString(message).index
    want = DirIndex.from_entries(decode_list_dir(message))
    assert {r: got.get(r) for r in got} == {r: want.get(r) for r in want}


@pytest.mark.parametrize("n", [20_000])
def test_growth_per_file(n: int) -> None:
    # A bot's sessions: 1,000 files a directory, names like Memoh's. The figure is printed for
    # the docs; the bound is memory, not time (it cannot flake on a busy machine).
    entries = [(f"sessions/{i // 1000:04d}-0f3c2a1e-6b7d-4c1e-9a2b/msg-{i:07d}.json", False,
                i % 6000, "-rw-r--r--", rfc3339(1_600_000_000 + i)) for i in range(n)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = DirIndex.from_entries(iter(entries))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    per_file = held / n
    print(f"DirIndex: {per_file:.0f} bytes a file ({n} files, names of 16 characters)")
    assert len(index) == n
    # FileEntry objects held ~350 bytes a file of this kind (tracemalloc, 300,000 files).
    assert per_file < 150
