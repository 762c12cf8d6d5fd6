"""The final flush of the destination's file system instead of a global ``sync`` (issue 25):
:func:`memoh_trio._scripts.flush.flush_command` in real shells and through Memoh's Go server,
and its parser without I/O."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import trio
from peers import RUN_IN, memoh_go_server, need_container

import memoh_trio
from memoh_trio._scripts.flush import FLUSHED, Flushed, flush_command, parse_flush


@pytest.mark.parametrize(("code", "out", "err", "want"), [
    (0, f"{FLUSHED} syncfs\n".encode(), b"", Flushed("syncfs")),
    (0, f"{FLUSHED} sync\n".encode(), b"", Flushed("sync")),
    (0, b"", b"", Flushed(None, "flush failed (exit 0): no message")),  # no proof it ran
    (0, f"{FLUSHED} maybe\n".encode(), b"", Flushed(None, "flush failed (exit 0): no message")),
    (1, f"{FLUSHED} syncfs\n".encode(), b"x\nsync: error syncing '.': Input/output error\n",
     Flushed(None, "flush failed (exit 1): sync: error syncing '.': Input/output error")),
])
def test_parse_flush(code: int, out: bytes, err: bytes, want: Flushed) -> None:
    assert parse_flush(code, out, err) == want


def run_in(kind: str, command: str, cwd: Path,
           path: str | None = None) -> subprocess.CompletedProcess[bytes]:
    if kind == "host":
        env = {**os.environ, "PATH": path or os.environ["PATH"]}
        return subprocess.run(["/bin/sh", "-c", command], cwd=cwd, env=env,
                              capture_output=True, timeout=60, check=False)
    need_container(kind)
    return subprocess.run(["bash", str(RUN_IN), kind, "/bin/sh", "-c", command], cwd=cwd,
                          capture_output=True, timeout=60, check=False)


@pytest.mark.parametrize("kind", ["busybox", "busybox-python", "gnu-nopython", "host"])
def test_sync_f_of_the_destination(kind: str, tmp_path: Path) -> None:
    (tmp_path / "bot dir").mkdir()
    done = run_in(kind, flush_command("bot dir"), tmp_path)
    assert parse_flush(done.returncode, done.stdout, done.stderr) == Flushed("syncfs"), done


def fake_sync(tmp_path: Path, body: str) -> str:
    """A PATH whose ``sync`` is a script (``body``) in front of the host's tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "sync"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    (tmp_path / "calls").write_text("")
    return f"{bin_dir}:{os.environ['PATH']}"


def test_a_sync_without_f_falls_back_to_the_global_sync(tmp_path: Path) -> None:
    # an old sync (coreutils < 8.24, busybox without FEATURE_SYNC_FANCY): unknown option
    path = fake_sync(tmp_path, 'echo "$*" >> calls\n'
                     'case "$1" in -f) echo "sync: invalid option -- \'f\'" >&2; '
                     'echo "Usage: sync" >&2; exit 1;; esac\nexec /bin/sync "$@"')
    done = run_in("host", flush_command(""), tmp_path, path)
    assert parse_flush(done.returncode, done.stdout, done.stderr) == Flushed("sync"), done
    assert (tmp_path / "calls").read_text() == "-f -- .\n\n"  # then sync with no argument


def test_a_failing_syncfs_fails_the_flush_without_a_global_sync(tmp_path: Path) -> None:
    # sync(2) reports no error: falling back to it would hide syncfs's EIO
    path = fake_sync(tmp_path, 'echo "$*" >> calls\n'
                     'echo "sync: error syncing \'$3\': Input/output error" >&2; exit 1')
    done = run_in("host", flush_command("d"), tmp_path, path)
    got = parse_flush(done.returncode, done.stdout, done.stderr)
    assert got == Flushed(None, "flush failed (exit 1): sync: error syncing './d': "
                                "Input/output error"), done
    assert (tmp_path / "calls").read_text() == "-f -- ./d\n"


@pytest.mark.memoh_go
async def test_flush_through_memoh_go_server_in_busybox_python(tmp_path: Path) -> None:
    (tmp_path / "bot").mkdir()
    async with memoh_go_server(tmp_path, kind="busybox-python") as peer, \
            memoh_trio.connect(peer.target) as client:
        with trio.fail_after(60):
            result = await client.exec(flush_command("bot"))
    assert parse_flush(result.exit_code, result.stdout, result.stderr) == Flushed("syncfs")
