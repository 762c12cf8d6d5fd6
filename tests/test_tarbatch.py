"""memoh_trio._tarbatch: batch planning, the archive, the scripts (run by a real /bin/sh + tar
here, as the container would) and the parsing of their output."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memoh_trio._scripts import (
    NO_RUN_EXIT,
    RUN_MEMBER,
    RUN_STDIN,
    TAR_FAILED_EXIT,
    Check,
    dir_prefixes,
    extract_command,
    listing_script,
    make_dirs,
    move_script,
    parse_listing,
    parse_records,
)
from memoh_trio._tarbatch import DEFAULT_MODE, Batcher, Member, file_header, layout, pack

_names = st.sampled_from(["a", "-x", "d e", "ü", "n\nl", "q'\"$`\\", "--", "*", ".h"])
_rels = st.lists(_names, min_size=1, max_size=3).map("/".join)


def _sh(script: str, cwd: Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["/bin/sh", "-c", script], cwd=cwd, input=stdin, capture_output=True,
                          check=False)


def test_batcher_bounds() -> None:
    b: Batcher[int] = Batcher(max_bytes=10, max_files=3, max_path_bytes=100)
    assert b.add(1, 4, "a") is None
    assert b.add(2, 4, "b") is None
    assert b.add(3, 4, "c") == [1, 2]  # 12 bytes would exceed 10
    assert b.add(4, 1, "d") is None and b.add(5, 1, "e") is None
    assert b.add(6, 1, "f") == [3, 4, 5]  # a fourth file would exceed 3
    assert b.add(7, 50, "g") == [6]  # an oversized item still gets a batch of its own
    assert b.take() == [7] and len(b) == 0
    p: Batcher[str] = Batcher(max_path_bytes=4)
    assert p.add("x", 0, "üü") is None and p.add("y", 0, "z") == ["x"]  # UTF-8 bytes count


def test_batcher_first_batch_is_smaller() -> None:
    """The first batch goes out after ``first_max_files`` files, later ones after
    ``max_files``: the container starts unpacking while the walk goes on."""
    b: Batcher[int] = Batcher(max_files=4, first_max_files=2)
    got = [batch for i in range(11) if (batch := b.add(i, 1, f"f{i}")) is not None]
    assert got == [[0, 1], [2, 3, 4, 5], [6, 7, 8, 9]] and b.take() == [10]
    assert Batcher().first_max_files < Batcher().max_files


def test_layout_groups_by_directory() -> None:
    lay = layout(["a/x", "b", "a/y", "a/b/z", "c"])
    assert lay.dirs == ("a", "", "a/b")
    assert lay.groups == ((0, 2), (1, 4), (3,))
    assert lay.staged == ("0/x", "1/b", "0/y", "2/z", "1/c")
    with pytest.raises(ValueError):
        layout(["a/"])


def test_pack_is_a_valid_archive_with_modes_and_mtimes() -> None:
    members = [Member("d/f", b"hello", 0o751, 1_600_000_000_123_456_789),
               Member("g", b"", 0o600, 1_500_000_000_000_000_000)]
    lay = layout([m.rel for m in members])
    with tarfile.open(fileobj=io.BytesIO(pack(members, lay))) as tf:
        infos = {i.name: i for i in tf.getmembers()}
        assert set(infos) == {"0", "1", "0/f", "1/g"}
        f = infos["0/f"]
        assert f.mode == 0o751 and f.size == 5 and f.uid == 0
        assert f.mtime == 1600000000 and "mtime" not in f.pax_headers  # applied later
        assert tf.extractfile(f).read() == b"hello"  # type: ignore[union-attr]
        assert "mtime" not in infos["1/g"].pax_headers
    with tarfile.open(fileobj=io.BytesIO(pack(members, lay, preserve=False))) as tf:
        assert tf.getmember("0/f").mode == DEFAULT_MODE


@settings(max_examples=30, deadline=None)
@given(rels=st.lists(_rels, min_size=1, max_size=6, unique=True), sha=st.booleans(),
       drop=st.integers(0, 10))
def test_scripts_round_trip_through_sh_and_tar(tmp_path_factory: pytest.TempPathFactory,
                                               rels: list[str], sha: bool, drop: int) -> None:
    rels = [r for r in rels if not any(o.startswith(r + "/") for o in rels)]
    dest = tmp_path_factory.mktemp("dest")
    members = [Member(r, r.encode() * 3, 0o640, 1_700_000_000_000_000_042) for r in rels]
    lay = layout(rels)
    check: Check = "sha256" if sha else "size"
    archive = pack(members, lay, trailer=(RUN_MEMBER, listing_script(lay, check).encode()))
    res = _sh(extract_command(".memoh-tar-t"), dest, archive)
    assert res.returncode == 0, res.stderr
    listing = parse_listing(res.stdout, lay.staged, check)
    want = {i: hashlib.sha256(m.data).hexdigest() if sha else len(m.data)
            for i, m in enumerate(members)}
    assert listing == want
    good = [i for i in range(len(members)) if i != drop]  # one member left out of the move
    res = _sh(RUN_STDIN, dest, move_script(".memoh-tar-t", lay, good).encode())
    records = parse_records(res.stdout, len(members))
    assert res.returncode == 0 and all(records[i] is None for i in good), res
    assert drop not in good or records.get(drop) is not None
    assert not (dest / ".memoh-tar-t").exists()
    for i, m in enumerate(members):
        p = dest / m.rel
        if i in good:
            assert p.read_bytes() == m.data
            assert p.stat().st_mode & 0o777 == 0o640
            assert p.stat().st_mtime_ns != m.mtime_ns  # tar -m: the metadata step sets it
        else:
            assert not p.exists()


def test_cut_archive_never_reaches_a_final_path(tmp_path: Path) -> None:
    members = [Member(f"f{i}", os.urandom(3000), 0o644, 0) for i in range(3)]
    lay = layout([m.rel for m in members])
    archive = pack(members, lay, trailer=(RUN_MEMBER, listing_script(lay, "size").encode()))
    # Cut anywhere, at member boundaries included (where tar may not notice): the listing
    # script is the last member, so it never runs.
    for cut in (0, 700, 1024, 2000, 4608, len(archive) // 2, len(archive) - 1100,
                len(archive) - 2048):
        dest = tmp_path / str(cut)
        dest.mkdir()
        res = _sh(extract_command(".memoh-tar-t"), dest, archive[:cut])
        listing = parse_listing(res.stdout, lay.staged, "size")
        ok = res.returncode == 0 and all(listing.get(i) == 3000 for i in range(3))
        assert not ok, cut
        assert [p.name for p in dest.iterdir()] in ([], [".memoh-tar-t"])
        if res.returncode in (TAR_FAILED_EXIT, NO_RUN_EXIT):
            assert not (dest / ".memoh-tar-t").exists()


def test_parse_listing_skips_missing_and_unescapes() -> None:
    staged = ["0/a", "0/n\nl", "1/b\\c", "1/zz"]
    sizes = b"3 0/a\n7 1/b\\c\n"  # 0/n\nl missing, 1/zz missing
    assert parse_listing(sizes, staged, "size") == {0: 3, 2: 7}
    assert parse_listing(b"5 0/a\nl\n", ["0/a\nl"], "size") == {0: 5}
    h = "ab" * 32
    gnu = f"{h}  0/a\n\\{h}  0/n\\nl\n\\{h}  1/b\\\\c\n".encode()
    assert parse_listing(gnu, staged, "sha256") == {0: h, 1: h, 2: h}
    busybox = f"{h.upper()}  0/n\nl\n".encode()
    assert parse_listing(busybox, staged[1:2], "sha256") == {0: h}
    assert parse_listing(b"garbage\n", staged, "size") == {}


def test_move_script_reports_failed_groups(tmp_path: Path) -> None:
    lay = layout(["blocked/x", "ok"])
    staging = tmp_path / ".memoh-tar-t"
    (staging / "0").mkdir(parents=True)
    (staging / "1").mkdir()
    (staging / "0" / "x").write_bytes(b"1")
    (staging / "1" / "ok").write_bytes(b"2")
    (tmp_path / "blocked").write_bytes(b"a file where a directory is needed")
    res = _sh(RUN_STDIN, tmp_path, move_script(".memoh-tar-t", lay, [0, 1]).encode())
    records = parse_records(res.stdout, 2)
    assert records == {0: "not a directory on the way", 1: None}, records
    assert (tmp_path / "ok").read_bytes() == b"2"
    assert not staging.exists()


def test_dir_prefixes_parents_first_once() -> None:
    assert dir_prefixes(["a/b/c", "a/b", "x", "", "a/d"]) == ["a", "a/b", "a/b/c", "x", "a/d"]
    assert make_dirs([]) == ":"


def test_make_dirs_one_mkdir_never_below_a_symlink(tmp_path: Path) -> None:
    """Missing directories are created, parents first; nothing below a symlink or a file."""
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    (root / "file").write_bytes(b"f")
    (root / "have").mkdir()
    res = _sh(make_dirs(["new/a/b", "link/x/y", "file/z", "have/c", "new/d"]), root)
    assert res.returncode == 0, res.stderr
    assert list(outside.iterdir()) == []
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "file", "have", "have/c", "link", "new", "new/a", "new/a/b", "new/d"]


@settings(max_examples=300, deadline=None)
@given(name=st.text(min_size=1, max_size=120), size=st.integers(0, 8 ** 12),
       mode=st.integers(0, 0o7777), mtime=st.integers(-5, 8 ** 12))
def test_file_header_is_tarfiles(name: str, size: int, mode: int, mtime: int) -> None:
    """The hand-built header is byte for byte tarfile's pax-format header, or None where
    tarfile would add a pax record (long or non-ASCII name, out-of-range numbers)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    ref = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    got = file_header(name, size, mode, mtime)
    if got is None:
        assert len(ref) > 512 or not name.isascii() or len(name) > 100
    else:
        assert got == ref
