"""Trust nothing, round 3 (issue 23, items 1-4): wrong entries standing at the destination.

A symlink, a FIFO or a device node where a file goes is never opened, written through or kept:
the entry ends a regular file holding the source's bytes, or it fails and the source stays.
Every test drives the real ``memoh-trio migrate`` process into Memoh's real Go server (which
follows symlinks and confines nothing), with its Exec inside each kind of container userland.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from peers import RUN_IN, memoh_go_server, need_container

from memoh_trio import FileEntry, _scripts
from memoh_trio._fs.read import go_mode_string

MIGRATED = ".migrated"
SECRET = b"outside the tree: must never change\n"
T0 = 1_600_000_000  # a whole second: resume's quick check compares seconds
#: Memoh's Go server as such (the host's tools), and with its Exec in Memoh's bot image
#: (busybox + python3) and in a busybox-only container.
KINDS = [pytest.param(k, marks=pytest.mark.memoh_go)
         for k in ("memoh-go", "memoh-go@busybox-python", "memoh-go@busybox")]


@asynccontextmanager
async def memoh(kind: str, root: Path) -> AsyncIterator[str]:
    async with memoh_go_server(root, kind=kind.partition("@")[2] or None) as peer:
        yield peer.target


async def migrate(src: Path, target: str, *extra: str, limit: float = 60) -> tuple[int, str]:
    """``memoh-trio migrate`` as a process; its exit code and what it printed. A run that
    outlives ``limit`` is killed and fails the test."""
    cmd = [sys.executable, "-m", "memoh_trio", "migrate", str(src), "--target", target, *extra]
    with trio.move_on_after(limit) as scope:
        done = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True,
                                      check=False)
    if scope.cancelled_caught:
        pytest.fail(f"memoh-trio migrate did not end within {limit} s")
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


def kind_of(path: Path) -> str:
    mode = path.lstat().st_mode
    return ("file" if stat.S_ISREG(mode) else "symlink" if stat.S_ISLNK(mode)
            else "fifo" if stat.S_ISFIFO(mode) else "device" if stat.S_ISCHR(mode) else "other")


def ends_regular_or_fails(code: int, out: str, src: Path, dest: Path, data: bytes) -> None:
    """The issue's rule: the entry ends a regular file with the source's bytes and the run
    migrated, or the run failed and the source is where it was."""
    if code == 0:
        assert kind_of(dest) == "file" and dest.read_bytes() == data, (kind_of(dest), out)
        assert Path(f"{src}{MIGRATED}").is_dir() and not src.exists(), out
    else:
        assert code == 1, out
        assert src.is_dir() and not Path(f"{src}{MIGRATED}").exists(), out
        assert kind_of(dest) != "file" or dest.read_bytes() == data, out


def source_tree(tmp_path: Path) -> Path:
    src = tmp_path / "bots" / "bot-a"
    (src / "memory").mkdir(parents=True)
    (src / "memory" / ".gitkeep").write_bytes(b"")
    (src / "memory" / "note.md").write_bytes(b"# note\n" * 20)
    (src / "config.json").write_bytes(b'{"name": "a"}\n')
    return src


@pytest.mark.parametrize("extra", [(), ("--no-preserve",)], ids=["default", "no-preserve"])
@pytest.mark.parametrize("kind", KINDS)
async def test_an_empty_file_is_never_written_through_a_destination_symlink(
        tmp_path: Path, kind: str, extra: tuple[str, ...]) -> None:
    # Item 1: destination memory/.gitkeep -> a file outside the tree; the source's is empty.
    # Written in place, Memoh's server os.Create()d through the link (36 bytes -> 0).
    src = source_tree(tmp_path)
    outside = tmp_path / "outside" / "secret"
    outside.parent.mkdir()
    outside.write_bytes(SECRET)
    root = tmp_path / "data"
    (root / "memory").mkdir(parents=True)
    (root / "memory" / ".gitkeep").symlink_to(outside)
    async with memoh(kind, root) as target:
        code, out = await migrate(src, target, *extra)
    assert outside.read_bytes() == SECRET, out
    ends_regular_or_fails(code, out, src, root / "memory" / ".gitkeep", b"")


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_device(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers


@pytest.mark.parametrize("make", [make_fifo, make_device], ids=["fifo", "device"])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_fifo_or_device_where_an_empty_file_goes_does_not_stay(
        tmp_path: Path, kind: str, make: Callable[[Path], None]) -> None:
    # Item 2: the destination entry must end a regular empty file, or the entry fails.
    if make is make_device and os.geteuid() != 0:
        pytest.skip("mknod of a device node needs root")
    src = source_tree(tmp_path)
    root = tmp_path / "data"
    (root / "memory").mkdir(parents=True)
    make(root / "memory" / ".gitkeep")
    async with memoh(kind, root) as target:
        code, out = await migrate(src, target, "--no-preserve")
    ends_regular_or_fails(code, out, src, root / "memory" / ".gitkeep", b"")


@pytest.mark.parametrize("extra", [(), ("--no-preserve",)], ids=["default", "no-preserve"])
@pytest.mark.parametrize("kind", KINDS)
async def test_resume_counts_only_a_regular_file_as_unchanged(
        tmp_path: Path, kind: str, extra: tuple[str, ...]) -> None:
    # Item 3: a destination symlink whose target text has the source file's length and the
    # same mtime second, and a FIFO where an empty file goes with the same mtime second, both
    # passed resume's quick check (same size, same second) and stayed.
    src = source_tree(tmp_path)
    outside = tmp_path / "outside" / "secret"
    outside.parent.mkdir()
    outside.write_bytes(SECRET)
    link_text = str(outside)
    data = b"x" * len(link_text.encode())
    (src / "memory" / "same-size.txt").write_bytes(data)
    for rel in ("memory/same-size.txt", "memory/.gitkeep"):
        os.utime(src / rel, ns=(T0 * 10**9, T0 * 10**9 + 250_000_000))
    root = tmp_path / "data"
    (root / "memory").mkdir(parents=True)
    (root / "memory" / "same-size.txt").symlink_to(link_text)
    os.utime(root / "memory" / "same-size.txt", ns=(T0 * 10**9, T0 * 10**9),
             follow_symlinks=False)
    os.mkfifo(root / "memory" / ".gitkeep")
    os.utime(root / "memory" / ".gitkeep", ns=(T0 * 10**9, T0 * 10**9))
    async with memoh(kind, root) as target:
        code, out = await migrate(src, target, "--json", *extra)
    assert outside.read_bytes() == SECRET, out
    assert code == 0, out
    report = json.JSONDecoder().raw_decode(out[out.index("{"):])[0]
    assert report["unchanged"] == 0, report
    ends_regular_or_fails(code, out, src, root / "memory" / "same-size.txt", data)
    ends_regular_or_fails(code, out, src, root / "memory" / ".gitkeep", b"")


@pytest.mark.parametrize("kind", KINDS)
async def test_verify_sha256_over_a_fifo_at_the_destination_sends_it_again_promptly(
        tmp_path: Path, kind: str) -> None:
    # Item 4: a FIFO where an empty file goes (same mtime second) made sha256sum block on
    # opening it; the run ended after ten stall timeouts (600 s) with exit 3 and no JSON.
    src = source_tree(tmp_path)
    os.utime(src / "memory" / ".gitkeep", ns=(T0 * 10**9, T0 * 10**9))
    root = tmp_path / "data"
    (root / "memory").mkdir(parents=True)
    os.mkfifo(root / "memory" / ".gitkeep")
    os.utime(root / "memory" / ".gitkeep", ns=(T0 * 10**9, T0 * 10**9))
    async with memoh(kind, root) as target:
        code, out = await migrate(src, target, "--verify", "sha256", "--json", limit=45)
    assert code == 0, out
    report = json.JSONDecoder().raw_decode(out[out.index("{"):])[0]
    assert report["status"] == "migrated", report
    ends_regular_or_fails(code, out, src, root / "memory" / ".gitkeep", b"")


@pytest.mark.parametrize("kind", ["dash", "busybox", "gnu-nopython"])
def test_the_hash_scripts_never_open_a_non_regular_file(tmp_path: Path, kind: str) -> None:
    # Item 4, the scripts themselves: a FIFO, a symlink or a device is left out (promptly),
    # never opened; the regular file beside them is hashed.
    (tmp_path / "ok.txt").write_bytes(b"hello\n")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to("ok.txt")
    if os.geteuid() == 0:
        make_device(tmp_path / "dev")
    names = ["ok.txt", "fifo", "link", "dev"]
    script, stdin = _scripts.sha256_many(names)
    shell = ["dash", "-c"] if kind == "dash" else ["sh", "-c"]
    if kind != "dash":
        need_container(kind)
        shell = ["bash", str(RUN_IN), kind, "sh", "-c"]
    done = subprocess.run([*shell, script], input=stdin, cwd=tmp_path, capture_output=True,
                          timeout=20, check=False)
    got = _scripts.parse_sha256_many(done.stdout)
    assert set(got) == {"ok.txt"}, (got, done.stderr)
    for name in names[1:]:
        one = subprocess.run([*shell, _scripts.sha256_command(name)], cwd=tmp_path,
                             capture_output=True, timeout=20, check=False)
        assert one.returncode != 0 and _scripts.parse_sha256(one.stdout) is None, name


@pytest.mark.parametrize(("st_mode", "regular"), [
    (stat.S_IFREG | 0o644, True), (stat.S_IFREG | stat.S_ISUID | stat.S_ISGID | 0o755, True),
    (stat.S_IFREG | stat.S_ISVTX | 0o600, True), (stat.S_IFLNK | 0o777, False),
    (stat.S_IFIFO | 0o644, False), (stat.S_IFCHR | 0o666, False), (stat.S_IFBLK | 0o660, False),
    (stat.S_IFSOCK | 0o755, False), (stat.S_IFDIR | 0o755, False),
])
def test_only_a_regular_file_is_regular(st_mode: int, regular: bool) -> None:
    # Pure: resume's quick check reads the type from Go's FileMode string (Memoh's and ours).
    mode = go_mode_string(st_mode)
    entry = FileEntry("f", stat.S_ISDIR(st_mode), 0, mode, "2020-09-13T12:26:40Z")
    assert entry.is_regular is regular, mode
    assert FileEntry("f", False, 0, "", "").is_regular is False  # no mode: not vouched for
