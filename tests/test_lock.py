"""Single flight: the lock file next to the source excludes a second run, which waits or fails."""
# ruff: noqa: ASYNC240  (tests inspect small local trees synchronously, on purpose)

from __future__ import annotations

import fcntl
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from memoh_trio._errors import MigrationBusy, SourceError
from memoh_trio._lock import lock_path, single_flight


def test_lock_path_is_a_hidden_sibling(tmp_path: Path) -> None:
    assert lock_path(tmp_path / "bots" / "b1") == str(tmp_path / "bots" / ".b1.memoh-lock")
    assert lock_path(str(tmp_path / "b1") + "/") == str(tmp_path / ".b1.memoh-lock")


async def test_second_holder_fails_fast(tmp_path: Path) -> None:
    src = tmp_path / "b1"
    src.mkdir()
    async with single_flight(src) as path:
        assert os.path.exists(path)
        with pytest.raises(MigrationBusy, match="another migration"):
            async with single_flight(src):
                pytest.fail("lock taken twice")
    # released: a new holder gets it at once, and the source was never touched
    async with single_flight(src):
        pass
    assert list(src.iterdir()) == []


async def test_waiter_gets_the_lock_when_released(tmp_path: Path) -> None:
    src = tmp_path / "b1"
    src.mkdir()
    order: list[str] = []

    async def second() -> None:
        async with single_flight(src, wait=math.inf):
            order.append("second")

    async with trio.open_nursery() as nursery, single_flight(src):
        nursery.start_soon(second)
        await trio.sleep(0.2)
        order.append("first-done")
    assert order == ["first-done", "second"]


async def test_missing_parent_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot create the lock file"):
        async with single_flight(tmp_path / "no" / "such" / "src"):
            pass


async def test_wait_times_out(tmp_path: Path) -> None:
    src = tmp_path / "b1"
    async with single_flight(src):
        with pytest.raises(MigrationBusy):
            async with single_flight(src, wait=0.15):
                pass


async def test_waiting_is_cancellable(tmp_path: Path) -> None:
    src = tmp_path / "b1"
    async with single_flight(src):
        with trio.move_on_after(0.1) as scope:
            async with single_flight(src, wait=math.inf):
                pytest.fail("lock taken twice")
        assert scope.cancelled_caught


async def test_excludes_another_process(tmp_path: Path) -> None:
    src = tmp_path / "b1"
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({lock_path(src)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert (await proc.stdout.receive_some()).startswith(b"locked")
        with pytest.raises(MigrationBusy):
            async with single_flight(src):
                pass
        await proc.stdin.aclose()  # the holder exits: the kernel drops its lock
        await proc.wait()
    finally:
        proc.kill()
        await proc.wait()
    async with single_flight(src):
        pass


def test_lock_path_is_keyed_on_the_real_directory(tmp_path: Path) -> None:
    real = tmp_path / "bots" / "b1"
    real.mkdir(parents=True)
    (tmp_path / "alias").symlink_to(real)
    (tmp_path / "linked-bots").symlink_to(tmp_path / "bots")
    want = str(tmp_path / "bots" / ".b1.memoh-lock")
    assert lock_path(tmp_path / "alias") == want
    assert lock_path(tmp_path / "linked-bots" / "b1") == want


async def test_alias_meets_the_same_lock(tmp_path: Path) -> None:
    src = tmp_path / "b1"
    src.mkdir()
    (tmp_path / "alias").symlink_to(src)
    async with single_flight(src):
        with pytest.raises(MigrationBusy):
            async with single_flight(tmp_path / "alias"):
                pytest.fail("lock taken twice through an alias")


async def test_lock_file_is_removed_on_release(tmp_path: Path) -> None:
    src = tmp_path / "b1"
    src.mkdir()
    async with single_flight(src) as path:
        assert os.path.isfile(path)
    assert not os.path.lexists(path)
    with pytest.raises(MigrationBusy):  # still exclusive after a release and a new holder
        async with single_flight(src), single_flight(src):
            pass
    assert not os.path.lexists(path)


async def test_waiter_on_an_unlinked_lock_file_starts_again(tmp_path: Path) -> None:
    """A run that opened the lock file just before its holder unlinked it, and flocks it just
    after, holds a lock on a file nobody else looks at: it must not count that as the lock."""
    src = tmp_path / "b1"
    src.mkdir()
    path = lock_path(src)
    async with single_flight(src):
        stale = os.open(path, os.O_RDWR)  # the waiter's open, before the release
    try:
        fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # it gets the unlinked file's lock
        # A run starting now creates a new lock file and holds it; it must exclude a third.
        async with single_flight(src):
            with pytest.raises(MigrationBusy):
                async with single_flight(src):
                    pass
    finally:
        os.close(stale)


async def test_waiters_never_hold_the_lock_together(tmp_path: Path) -> None:
    """Many tasks take and release the lock in a loop: never two holders at once."""
    src = tmp_path / "b1"
    src.mkdir()
    holders = 0
    most = 0

    async def worker() -> None:
        nonlocal holders, most
        for _ in range(20):
            async with single_flight(src, wait=math.inf):
                holders += 1
                most = max(most, holders)
                await trio.lowlevel.checkpoint()
                holders -= 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(worker)
    assert most == 1
    assert not os.path.lexists(lock_path(src))


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
async def test_planted_lock_file_is_refused(tmp_path: Path, kind: str) -> None:
    """A symlink at the lock file's name is not followed; a FIFO is not waited on."""
    src = tmp_path / "b1"
    src.mkdir()
    path = lock_path(src)
    victim = tmp_path / "elsewhere"
    if kind == "symlink":
        os.symlink(victim, path)
    else:
        os.mkfifo(path)
    with trio.fail_after(5), pytest.raises(SourceError, match="lock file"):
        async with single_flight(src):
            pass
    assert not victim.exists()
