"""Every row of the classification table in memoh_trio._plan, from real lstat results."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memoh_trio._plan import (
    REQUIRED_KINDS,
    Action,
    Kind,
    LargestFirst,
    Route,
    WalkEntry,
    classify,
    describe_os_error,
    display_path,
    is_utf8,
    route,
)


def entry_for(path: Path, rel: str, **kw: object) -> WalkEntry:
    return WalkEntry(rel, str(path), st=os.lstat(path), **kw)  # type: ignore[arg-type]


def test_regular_file_is_copied_with_size_mode_and_mtime(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 10)
    f.chmod(0o640)
    os.utime(f, ns=(1_000_000_000, 1_234_567_891_000_000_000))
    action = classify(entry_for(f, "a.bin"))
    assert action.kind is Kind.COPY
    assert (action.size, action.mode, action.mtime_ns) == (10, 0o640, 1_234_567_891_000_000_000)
    assert action.rel == "a.bin" and action.host_path == str(f)


def test_empty_file_is_created(tmp_path: Path) -> None:
    f = tmp_path / "empty"
    f.touch()
    assert classify(entry_for(f, "empty")).kind is Kind.CREATE


def test_empty_directory_is_made_and_full_one_only_preserved(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir(mode=0o750)
    assert classify(entry_for(d, "d", empty_dir=True)).kind is Kind.MKDIR
    action = classify(entry_for(d, "d", empty_dir=False))
    assert action.kind is Kind.DIR
    assert action.mode == stat.S_IMODE(os.lstat(d).st_mode)


def test_symlink_is_recreated_not_followed(tmp_path: Path) -> None:
    link = tmp_path / "l"
    link.symlink_to("/etc/passwd")
    action = classify(entry_for(link, "l", link_target="/etc/passwd"))
    assert action.kind is Kind.SYMLINK
    assert action.link_target == "/etc/passwd"
    assert action.size == 0  # lstat: the link, not its target


def test_dangling_symlink_is_recreated(tmp_path: Path) -> None:
    link = tmp_path / "dangling"
    link.symlink_to("nowhere/at/all")
    action = classify(entry_for(link, "dangling", link_target="nowhere/at/all"))
    assert action.kind is Kind.SYMLINK


def test_symlink_without_readable_target_fails(tmp_path: Path) -> None:
    link = tmp_path / "l"
    link.symlink_to("x")
    action = classify(entry_for(link, "l"))
    assert action.kind is Kind.FAIL and "target" in action.reason


def test_fifo_is_skipped(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    action = classify(entry_for(fifo, "pipe"))
    assert action.kind is Kind.SKIP and "FIFO" in action.reason


def test_socket_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        action = classify(entry_for(path, "s.sock"))
    assert action.kind is Kind.SKIP and "socket" in action.reason


@pytest.mark.parametrize(
    ("fmt", "word"), [(stat.S_IFCHR, "character device"), (stat.S_IFBLK, "block device")]
)
def test_devices_are_skipped(tmp_path: Path, fmt: int, word: str) -> None:
    # mknod needs root; the classification only looks at st_mode, so use /dev/null's lstat for
    # the character device and a synthesised stat_result for the block device.
    real = os.lstat("/dev/null")
    fields = list(real)
    fields[0] = fmt | 0o600
    st_fake = os.stat_result(fields)
    action = classify(WalkEntry("dev", "/nonexistent/dev", st=st_fake))
    assert action.kind is Kind.SKIP and word in action.reason


def test_non_utf8_name_fails_with_clear_message(tmp_path: Path) -> None:
    raw = os.fsencode(str(tmp_path)) + b"/bad-\xff\xfe"
    with open(raw, "wb"):
        pass
    rel = os.fsdecode(b"bad-\xff\xfe")
    action = classify(WalkEntry(rel, os.fsdecode(raw), st=os.lstat(raw)))
    assert action.kind is Kind.FAIL
    assert "UTF-8" in action.reason
    assert display_path(rel) == "bad-\\xff\\xfe"


def test_non_utf8_symlink_target_fails(tmp_path: Path) -> None:
    link = tmp_path / "l"
    target = os.fsdecode(b"\xff")
    os.symlink(target, link)
    action = classify(entry_for(link, "l", link_target=os.readlink(link)))
    assert action.kind is Kind.FAIL and "UTF-8" in action.reason


def test_unreadable_entry_fails_with_strerror(tmp_path: Path) -> None:
    err = PermissionError(13, "Permission denied", str(tmp_path / "x"))
    action = classify(WalkEntry("x", str(tmp_path / "x"), error=err))
    assert action.kind is Kind.FAIL
    assert action.reason == "cannot read: permission denied"


def test_walk_error_on_directory_fails_even_with_stat(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    err = PermissionError(13, "Permission denied")
    action = classify(entry_for(d, "d", error=err))
    assert action.kind is Kind.FAIL


def test_missing_stat_fails() -> None:
    assert classify(WalkEntry("x", "/x")).kind is Kind.FAIL


def test_required_kinds() -> None:
    assert frozenset({Kind.COPY, Kind.CREATE, Kind.MKDIR, Kind.SYMLINK}) == REQUIRED_KINDS


def test_describe_os_error_without_strerror() -> None:
    assert describe_os_error(OSError("boom")) == "boom"


@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b))
def test_utf8_detection_matches_bytes(name: bytes) -> None:
    decoded = os.fsdecode(name)
    try:
        name.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    assert is_utf8(decoded) == valid
    assert os.fsencode(decoded) == name


# --------------------------------------------------------------------------- route


def _action(kind: Kind, size: int = 0) -> Action:
    return Action(kind, "a", "/src/a", size=size, link_target="t" if kind is Kind.SYMLINK else None)


@pytest.mark.parametrize(
    ("kind", "size", "dry_run", "unchanged", "tar_max", "expected"),
    [
        (Kind.FAIL, 0, False, False, 10, Route.FAIL),
        (Kind.SKIP, 0, True, False, 10, Route.SKIP),
        (Kind.DIR, 0, True, False, 10, Route.DIR),
        (Kind.COPY, 5, True, True, 10, Route.DRY_UNCHANGED),
        (Kind.CREATE, 0, True, True, 10, Route.DRY_UNCHANGED),
        (Kind.COPY, 5, True, False, 10, Route.DRY),
        (Kind.MKDIR, 0, True, True, 10, Route.DRY),  # resume only skips files
        (Kind.SYMLINK, 0, True, True, 10, Route.DRY),
        (Kind.SYMLINK, 0, False, False, 10, Route.LINK),
        (Kind.MKDIR, 0, False, True, 10, Route.ENTRY),
        (Kind.COPY, 5, False, True, 10, Route.UNCHANGED),
        (Kind.CREATE, 0, False, True, 10, Route.UNCHANGED),
        (Kind.COPY, 10, False, False, 10, Route.TAR),
        (Kind.COPY, 11, False, False, 10, Route.ENTRY),
        (Kind.COPY, 1, False, False, 0, Route.ENTRY),  # no tar batches
        (Kind.CREATE, 0, False, False, 10, Route.ENTRY),
    ],
)
def test_route(kind: Kind, size: int, dry_run: bool, unchanged: bool, tar_max: int,
               expected: Route) -> None:
    assert route(_action(kind, size), dry_run=dry_run, unchanged=unchanged,
                 tar_max_size=tar_max) is expected


@pytest.mark.parametrize(
    ("kind", "size", "unchanged", "expected"),
    [
        (Kind.COPY, 5, True, Route.HASH),
        (Kind.CREATE, 0, True, Route.HASH),
        (Kind.COPY, 5, False, Route.TAR),  # only what resume would skip is hashed
        (Kind.MKDIR, 0, True, Route.ENTRY),
        (Kind.SYMLINK, 0, True, Route.LINK),
    ],
)
def test_route_with_verify_hash(kind: Kind, size: int, unchanged: bool, expected: Route) -> None:
    assert route(_action(kind, size), dry_run=False, unchanged=unchanged, tar_max_size=10,
                 verify_hash=True) is expected


@pytest.mark.parametrize("kind", [Kind.COPY, Kind.CREATE, Kind.MKDIR, Kind.DIR, Kind.SYMLINK])
def test_route_blocked_by_a_symlink_at_the_destination(kind: Kind) -> None:
    action = Action(kind, "d/sub/a", "/src/d/sub/a", size=5,
                    link_target="t" if kind is Kind.SYMLINK else None)
    for links in ({"d"}, {"d/sub"}):
        assert route(action, dry_run=False, unchanged=True, tar_max_size=10,
                     dest_links=links) is Route.BLOCKED
    # Only a proper ancestor is in the way (the entry itself is replaced), and a dry run
    # sends nothing through it.
    assert route(action, dry_run=False, unchanged=False, tar_max_size=0,
                 dest_links={"d/sub/a", "e", "d/su"}) is not Route.BLOCKED
    assert route(action, dry_run=True, unchanged=False, tar_max_size=0,
                 dest_links={"d"}) is not Route.BLOCKED


@pytest.mark.parametrize("kind", [Kind.FAIL, Kind.SKIP])
def test_route_failures_and_skips_come_before_the_symlink_check(kind: Kind) -> None:
    action = Action(kind, "d/a", "/src/d/a", reason="why")
    expected = Route.FAIL if kind is Kind.FAIL else Route.SKIP
    assert route(action, dry_run=False, unchanged=False, tar_max_size=0,
                 dest_links={"d"}) is expected


@given(st.lists(st.integers(min_value=0, max_value=10**9), max_size=50))
def test_largest_first_hands_out_by_size_then_arrival(sizes: list[int]) -> None:
    queue: LargestFirst[int] = LargestFirst()
    for i, size in enumerate(sizes):
        queue.push(i, size)
    assert len(queue) == len(sizes)
    out = [queue.pop() for _ in sizes]
    assert out == sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    assert len(queue) == 0
    with pytest.raises(IndexError):
        queue.pop()
