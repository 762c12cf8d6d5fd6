"""The confined filesystem operations of the server (synchronous, no sockets)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memoh_trio import _fs
from memoh_trio._errors import Status
from memoh_trio._paths import InvalidPath, PathEscape


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("secret\n")
    return r


@pytest.fixture
def fd(root: Path) -> Iterator[int]:
    d = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    yield d
    os.close(d)


def _no_temp_files(top: Path) -> bool:
    return not [p for p in top.rglob("*") if p.name.startswith(_fs.TEMP_PREFIX)]


@pytest.mark.parametrize(
    ("mode", "text"),
    [
        (stat.S_IFREG | 0o644, "-rw-r--r--"),
        (stat.S_IFDIR | 0o755, "drwxr-xr-x"),
        (stat.S_IFLNK | 0o777, "Lrwxrwxrwx"),
        (stat.S_IFCHR | 0o666, "Dcrw-rw-rw-"),
        (stat.S_IFBLK | 0o660, "Drw-rw----"),
        (stat.S_IFIFO | 0o600, "prw-------"),
        (stat.S_IFSOCK | 0o755, "Srwxr-xr-x"),
        (stat.S_IFDIR | stat.S_ISVTX | 0o777, "dtrwxrwxrwx"),
        (stat.S_IFREG | stat.S_ISUID | 0o755, "urwxr-xr-x"),
        (stat.S_IFREG | stat.S_ISGID | 0o2755, "grwxr-xr-x"),
        (stat.S_IFREG, "----------"),
    ],
)
def test_go_mode_string(mode: int, text: str) -> None:
    assert _fs.go_mode_string(mode) == text


def test_rfc3339() -> None:
    assert _fs.rfc3339(0) == "1970-01-01T00:00:00Z"
    assert _fs.rfc3339(1700000000.9) == "2023-11-14T22:13:20Z"


def test_write_file_and_stat(root: Path, fd: int) -> None:
    _fs.write_file(fd, "/a/b/c.txt", b"hi")
    assert (root / "a/b/c.txt").read_bytes() == b"hi"
    e = _fs.stat(fd, "a/b/c.txt")
    assert (e.path, e.is_dir, e.size, e.mode[0]) == ("c.txt", False, 2, "-")
    assert _fs.stat(fd, "a").is_dir
    assert _fs.stat(fd, "/").path == "/"
    with pytest.raises(FileNotFoundError):
        _fs.stat(fd, "nope")
    with pytest.raises(InvalidPath):
        _fs.stat(fd, "")
    assert _no_temp_files(root)


def test_stat_follows_links_inside_root_only(root: Path, fd: int) -> None:
    (root / "d").mkdir()
    (root / "d" / "f").write_text("x")
    (root / "ln").symlink_to("d/f")
    (root / "out").symlink_to("../outside/secret")
    (root / "abs").symlink_to("/etc/passwd")
    assert _fs.stat(fd, "ln").size == 1
    for p in ("out", "abs", "out/x"):
        with pytest.raises(PathEscape):
            _fs.stat(fd, p)
    (root / "loop").symlink_to("loop")
    with pytest.raises(OSError) as info:
        _fs.stat(fd, "loop")
    assert info.value.errno == errno.ELOOP


def test_list_dir(root: Path, fd: int) -> None:
    (root / "b" / "c").mkdir(parents=True)
    (root / "b" / "c" / "f").write_text("12345")
    (root / "a").write_text("")
    (root / "b" / "esc").symlink_to("../../outside")
    flat = _fs.list_dir(fd, "")
    assert [e.path for e in flat] == ["a", "b"]
    deep = _fs.list_dir(fd, "/", recursive=True)
    assert [e.path for e in deep] == ["a", "b", "b/c", "b/c/f", "b/esc"]
    by = {e.path: e for e in deep}
    assert by["b/esc"].mode.startswith("L") and not by["b/esc"].is_dir
    assert by["b/c/f"].size == 5
    assert [e.path for e in _fs.list_dir(fd, "b", recursive=True)] == ["c", "c/f", "esc"]
    with pytest.raises(PathEscape):
        _fs.list_dir(fd, "b/esc")
    with pytest.raises(FileNotFoundError):
        _fs.list_dir(fd, "missing")
    with pytest.raises(NotADirectoryError):
        _fs.list_dir(fd, "a")


def test_read_file(root: Path, fd: int) -> None:
    (root / "t.txt").write_bytes(b"one\r\ntwo\n\nfour")
    content, total, binary = _fs.read_file(fd, "t.txt")
    assert (content, total, binary) == (
        "     1\tone\n     2\ttwo\n     3\t\n     4\tfour\n", 4, False)
    assert _fs.read_file(fd, "t.txt", 2, 1) == ("     2\ttwo\n", 4, False)
    assert _fs.read_file(fd, "t.txt", 9, 0) == ("", 4, False)
    (root / "bin").write_bytes(b"abc\x00def")
    assert _fs.read_file(fd, "bin") == ("", 0, True)
    (root / "long").write_text("x" * 1500 + "\n" + "y\n" * 500)
    content, total, _ = _fs.read_file(fd, "long")
    assert total == 501
    assert content.startswith("     1\t" + "x" * 1000 + "...\n")
    assert len(content.encode()) <= _fs.READ_MAX_BYTES
    (root / "many").write_text("l\n" * 300)
    content, total, _ = _fs.read_file(fd, "many")
    assert total == 300 and content.count("\n") == _fs.READ_MAX_LINES
    with pytest.raises(InvalidPath):
        _fs.read_file(fd, "/")
    (root / "sub").mkdir()
    with pytest.raises(IsADirectoryError):
        _fs.read_file(fd, "sub")
    os.mkfifo(root / "fifo")
    with pytest.raises(InvalidPath, match="regular"):
        _fs.read_file(fd, "fifo")  # and does not hang


def _read_file_whole_lines(data: bytes, first: int, count: int) -> tuple[str, int]:
    """ReadFile's output computed from whole lines (what it printed before it bounded them)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out: list[str] = []
    size, full = 0, False
    for number, line in enumerate(lines, 1):
        if full or number < first:
            continue
        if len(out) >= count:
            full = True
            continue
        line = line[:-1] if line.endswith(b"\r") else line
        text = line.decode("utf-8", "replace")
        text = text[:1000] + "..." if len(text) > 1000 else text
        text = f"{number:6d}\t{text}\n"
        if size + len(text.encode()) > _fs.READ_MAX_BYTES:
            full = True
            continue
        out.append(text)
        size += len(text.encode())
    return "".join(out), len(lines)


@pytest.mark.parametrize("data", [
    b"a" * 5000,                                    # one long line, no newline
    b"\xe2\x82\xac" * 1500 + b"\r\n" + b"b\r\n",     # 3-byte characters, CRLF
    b"c" * (_fs.LINE_KEEP_BYTES - 1) + b"\n" + b"d" * _fs.LINE_KEEP_BYTES + b"\n"
    + b"e" * (_fs.LINE_KEEP_BYTES + 1) + b"\r\n" + b"\xff" * 3000 + b"\nf",  # at the cut
    b"\xf0\x9f\x98\x80" * 1001 + b"\n" * 3 + b"g" * 70_000,  # 4-byte characters, empty lines
])
def test_read_file_long_lines_as_before(root: Path, fd: int, data: bytes) -> None:
    """Lines are read no further than ReadFile can show (LINE_KEEP_BYTES) and come out as
    the whole lines did."""
    (root / "long.txt").write_bytes(data)
    for first, count in ((0, 0), (2, 2), (4, 1)):
        expected = _read_file_whole_lines(data, max(first, 1), count or _fs.READ_MAX_LINES)
        content, total, binary = _fs.read_file(fd, "long.txt", first, count)
        assert (content, total, binary) == (*expected, False)


def test_mkdir(root: Path, fd: int) -> None:
    _fs.mkdir(fd, "x/y/z")
    _fs.mkdir(fd, "x/y/z")
    assert (root / "x/y/z").is_dir()
    (root / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        _fs.mkdir(fd, "file/sub")
    (root / "esc").symlink_to("../outside")
    with pytest.raises(PathEscape):
        _fs.mkdir(fd, "esc/new")
    assert not (root.parent / "outside" / "new").exists()


def test_rename(root: Path, fd: int) -> None:
    (root / "a").write_text("A")
    _fs.rename(fd, "a", "/deep/er/b")
    assert (root / "deep/er/b").read_text() == "A" and not (root / "a").exists()
    with pytest.raises(FileNotFoundError):
        _fs.rename(fd, "a", "c")
    assert not (root / "c").exists()
    with pytest.raises(PathEscape):
        _fs.rename(fd, "deep/er/b", "../stolen")
    with pytest.raises(PathEscape):
        _fs.rename(fd, "../outside/secret", "mine")
    with pytest.raises(InvalidPath):
        _fs.rename(fd, "/", "x")
    (root / "ln").symlink_to("../outside/secret")
    _fs.rename(fd, "ln", "ln2")  # the link itself moves, its target is untouched
    assert os.readlink(root / "ln2") == "../outside/secret"
    assert (root.parent / "outside/secret").read_text() == "secret\n"


def test_delete(root: Path, fd: int) -> None:
    _fs.delete(fd, "missing")
    _fs.delete(fd, "missing/deeper", recursive=True)
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "e" / "f").write_text("")
    with pytest.raises(OSError) as info:
        _fs.delete(fd, "d")
    assert info.value.errno == errno.ENOTEMPTY
    (root / "d" / "out").symlink_to("../../outside")
    _fs.delete(fd, "d", recursive=True)
    assert not (root / "d").exists()
    assert (root.parent / "outside/secret").exists()
    (root / "f").write_text("")
    _fs.delete(fd, "/f")
    assert not (root / "f").exists()
    with pytest.raises(InvalidPath):
        _fs.delete(fd, "/", recursive=True)
    with pytest.raises(PathEscape):
        _fs.delete(fd, "../outside/secret")


def test_raw_writer_commit_and_discard(root: Path, fd: int) -> None:
    w = _fs.RawWriter(fd, "up/file.bin")
    w.write(b"abc")
    w.write(b"def")
    assert not (root / "up/file.bin").exists()  # not visible before commit
    assert w.commit() == 6
    w.discard()
    assert (root / "up/file.bin").read_bytes() == b"abcdef"
    w2 = _fs.RawWriter(fd, "up/file.bin")
    w2.write(b"partial")
    w2.discard()
    w2.discard()
    assert (root / "up/file.bin").read_bytes() == b"abcdef"  # old content kept
    assert _no_temp_files(root)
    with pytest.raises(IsADirectoryError):
        _fs.RawWriter(fd, "up")
    with pytest.raises(InvalidPath):
        _fs.RawWriter(fd, "")


def test_raw_writer_durable(root: Path, fd: int) -> None:
    w = _fs.RawWriter(fd, "d.bin", durable=True)
    w.write(b"x" * 10)
    assert w.commit() == 10


def test_symlink_swapped_in_during_write_does_not_redirect(root: Path, fd: int) -> None:
    (root / "d").mkdir()
    w = _fs.RawWriter(fd, "d/f")
    w.write(b"first ")
    # Attack: move the directory away and put a symlink to the outside in its place.
    os.rename(root / "d", root / "d.moved")
    (root / "d").symlink_to("../outside")
    w.write(b"second")
    w.commit()
    assert not (root.parent / "outside" / "f").exists()
    assert (root / "d.moved" / "f").read_bytes() == b"first second"
    # A new upload through the swapped path is refused.
    with pytest.raises(PathEscape):
        _fs.RawWriter(fd, "d/g")


def test_final_component_symlink_is_replaced_not_followed(root: Path, fd: int) -> None:
    (root / "target").symlink_to("../outside/secret")
    _fs.write_file(fd, "target", b"new")
    assert (root / "target").read_bytes() == b"new" and not (root / "target").is_symlink()
    assert (root.parent / "outside/secret").read_text() == "secret\n"


def test_hooks_fail_nth_write(root: Path, fd: int) -> None:
    hooks = _fs.ServerHooks(fail_write_nth=2, fail_errno=errno.ENOSPC)
    w = _fs.RawWriter(fd, "h", hooks=hooks)
    w.write(b"1")
    with pytest.raises(OSError) as info:
        w.write(b"2")
    w.discard()
    assert info.value.errno == errno.ENOSPC
    assert _fs.status_for(info.value)[0] == Status.RESOURCE_EXHAUSTED
    assert hooks.writes == 2 and not (root / "h").exists() and _no_temp_files(root)
    assert hooks.should_stall(0) is False
    assert _fs.ServerHooks(stall_after_bytes=5).should_stall(5)


# --------------------------------------------------------------------------- direct I/O

KiB = 1024


def _direct_probe(directory: Path, length: int) -> bool:
    """Does this filesystem take an O_DIRECT write of ``length`` bytes at offset 0?"""
    import mmap

    fd = os.open(directory / "probe", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT)
    buf = mmap.mmap(-1, _fs.raw.DIRECT_BUFFER)
    try:
        with memoryview(buf) as mv:
            os.write(fd, mv[:length])
        return True
    except OSError:
        return False
    finally:
        buf.close()
        os.close(fd)
        os.unlink(directory / "probe")


_sizes = st.one_of(st.integers(0, 9000), st.integers(_fs.raw.DIRECT_MIN_CHUNK - 5, 2_200_000))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(_sizes, min_size=1, max_size=6), direct=st.booleans(),
       seed=st.integers(0, 255))
def test_raw_writer_direct_io_same_bytes(root: Path, fd: int, sizes: list[int], direct: bool,
                                         seed: int) -> None:
    """Any sequence of chunk sizes (aligned or not, small or past the staging buffer), direct or
    through the page cache: the committed file is the concatenation of the chunks."""
    chunks = [bytes((seed + i + j) % 251 for j in range(n)) for i, n in enumerate(sizes)]
    w = _fs.RawWriter(fd, "dio.bin", direct=direct)
    try:
        for chunk in chunks:
            w.write(chunk)
        assert w.commit() == sum(sizes)
    finally:
        w.discard()
    assert (root / "dio.bin").read_bytes() == b"".join(chunks)
    assert _no_temp_files(root)
    if not direct:
        assert w.direct_bytes == 0
    elif sizes[0] >= _fs.raw.DIRECT_MIN_CHUNK and _direct_probe(root, _fs.raw.DIRECT_ALIGN):
        # Direct from the first chunk on: everything but the last partial block (and the
        # chunks that came before the first big one) bypassed the page cache.
        assert w.direct_bytes == sum(sizes) - sum(sizes) % _fs.raw.DIRECT_ALIGN


def test_raw_writer_direct_io_refused_falls_back(root: Path, fd: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem that refuses a direct write (EINVAL, here a real one from the kernel: an
    unaligned length) gets the rest of the upload through the page cache, nothing lost."""
    if not _direct_probe(root, _fs.raw.DIRECT_ALIGN):
        pytest.skip("no O_DIRECT on this filesystem: every write already goes the buffered way")
    if _direct_probe(root, 1000):
        pytest.skip("this filesystem takes unaligned direct writes (tmpfs?)")
    monkeypatch.setattr(_fs.raw, "DIRECT_ALIGN", 1)  # flush every byte directly: refused
    data = os.urandom(_fs.raw.DIRECT_MIN_CHUNK + 12345)
    w = _fs.RawWriter(fd, "refused.bin", direct=True)
    w.write(data)
    w.write(data[:777])
    assert w.commit() == len(data) + 777
    assert (root / "refused.bin").read_bytes() == data + data[:777]
    assert w.direct_bytes == 0


def test_raw_writer_direct_io_discard_and_buffer_reuse(root: Path, fd: int) -> None:
    first = _fs.RawWriter(fd, "gone.bin", direct=True)
    first.write(os.urandom(_fs.raw.DIRECT_MIN_CHUNK + 1))
    stage = first._stage
    first.discard()
    assert first._stage is None and not (root / "gone.bin").exists() and _no_temp_files(root)
    with pytest.raises(OSError):
        first.write(b"late")  # after discard: EBADF, nothing written anywhere
    if stage is not None:  # the staging buffer went back to the pool for the next upload
        second = _fs.RawWriter(fd, "kept.bin", direct=True)
        second.write(b"z" * _fs.raw.DIRECT_MIN_CHUNK)
        assert second._stage is stage
        second.commit()
        assert (root / "kept.bin").read_bytes() == b"z" * _fs.raw.DIRECT_MIN_CHUNK


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (PathEscape("x"), Status.PERMISSION_DENIED),
        (InvalidPath("x"), Status.INVALID_ARGUMENT),
        (FileNotFoundError(errno.ENOENT, "no"), Status.NOT_FOUND),
        (OSError(errno.ENOSPC, "full"), Status.RESOURCE_EXHAUSTED),
        (OSError(errno.ELOOP, "loop"), Status.PERMISSION_DENIED),
        (OSError(errno.ENOTEMPTY, "ne"), Status.FAILED_PRECONDITION),
        (OSError(errno.EIO, "io"), Status.INTERNAL),
        (RuntimeError("?"), Status.INTERNAL),
    ],
)
def test_status_for(exc: BaseException, status: Status) -> None:
    assert _fs.status_for(exc)[0] == status


def test_replacing_a_file_keeps_its_permission_bits(root: Path, fd: int) -> None:
    """As Memoh's Go server, which truncates in place (os.Create / os.WriteFile)."""
    (root / "secret").write_bytes(b"old")
    os.chmod(root / "secret", 0o600)
    _fs.write_file(fd, "secret", b"new")
    writer = _fs.RawWriter(fd, "secret")
    writer.write(b"newer")
    writer.commit()
    assert (root / "secret").read_bytes() == b"newer"
    assert stat.S_IMODE((root / "secret").stat().st_mode) == 0o600
    _fs.write_file(fd, "fresh", b"x")
    assert stat.S_IMODE((root / "fresh").stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old
