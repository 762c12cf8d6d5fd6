"""Reading a small source file whole (no sockets): exactly the bytes the walk saw, or
SourceChanged; the fd is never left open."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from memoh_trio._source import SourceChanged, read_whole


@dataclass(frozen=True)
class Seen:
    host_path: str
    size: int
    mtime_ns: int
    dev: int
    ino: int


def seen(path: Path) -> Seen:
    st = os.lstat(path)
    return Seen(str(path), st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("size", [0, 1, 511, 4096, 65537, 300_000])
def test_reads_exactly_the_file(tmp_path: Path, size: int) -> None:
    f = tmp_path / "f"
    data = os.urandom(size)
    f.write_bytes(data)
    before = open_fds()
    assert read_whole(seen(f)) == data
    assert open_fds() == before


@pytest.mark.parametrize("change", ["grew", "shrank", "rewritten-same-size"])
def test_a_file_changed_after_the_walk_is_refused(tmp_path: Path, change: str) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    want = seen(f)
    if change == "grew":
        with f.open("ab") as out:
            out.write(b"more")
    elif change == "shrank":
        f.write_bytes(b"x" * 10)
    else:  # same size, new mtime
        os.utime(f, ns=(want.mtime_ns + 1_000_000_000, want.mtime_ns + 1_000_000_000))
    before = open_fds()
    with pytest.raises(SourceChanged, match="changed"):
        read_whole(want)
    assert open_fds() == before


def test_a_symlink_or_fifo_in_its_place_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"secret?")
    want = seen(f)
    f.unlink()
    os.symlink("/etc/hostname", f)
    with pytest.raises(SourceChanged):
        read_whole(want)
    f.unlink()
    os.mkfifo(f)
    with pytest.raises(SourceChanged):  # at once: never waits for a writer
        read_whole(want)
