"""Every way a file can travel (:data:`memoh_trio._migrate.lifecycle.WAYS`), end to end against
Memoh's Go server under Memoh's bot image (``run-in.sh busybox-python``: busybox's tools and
python3) and under plain ``busybox``, each run asserting the ways its files really took (the
run's trace, :func:`memoh_trio._migrate.lifecycle.tracing`). ``test_lifecycle.py`` checks that
each way of the table has a test here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from containertools import WithPath, check_run, fault_path, mixed_tree
from peers import TEST_TOKEN, memoh_go_server, memoh_trio_server

import memoh_trio

KINDS = ("busybox-python", "busybox")


def small_tree(src: Path, n: int = 4, size: int = 300 * 1024) -> dict[str, bytes]:
    files = {f"d{i % 2}/f{i}": bytes([i + 1]) * (size + i) for i in range(n)}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    return files


async def test_sha256_into_a_server_without_exec(tmp_path: Path) -> None:
    """``--verify sha256`` into ``memoh-trio serve --no-exec``: the container cannot hash, so
    each temporary file is read back (ReadRaw) and hashed here; every file migrates (5306aab:
    each failed with "TypeError: 'coroutine' object does not support the asynchronous context
    manager protocol", the deadline proxy wrapping ``Client.read_raw``)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = small_tree(src)
    dst.mkdir()
    async with memoh_trio_server(dst, "--no-exec") as peer, \
            memoh_trio.connect(peer.target, token=TEST_TOKEN) as client:
        with trio.fail_after(60):
            report = await memoh_trio.migrate(src, client, verify="sha256", preserve=False)
    assert report.status == "migrated", (report.failures[:3], report.error)
    for rel, data in files.items():
        assert (dst / rel).read_bytes() == data


@pytest.mark.memoh_go
@pytest.mark.parametrize("kind", KINDS)
async def test_sha256_where_sha256sum_fails(kind: str, tmp_path: Path) -> None:
    """``--verify sha256`` into Memoh's server where ``sha256sum`` fails: read back and hashed
    here (5306aab: every file failed with the TypeError above)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    mixed_tree(src)
    dst.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sha256sum").write_text("#!/bin/sh\necho 'sha256sum: broken' >&2\nexit 1\n")
    (bin_dir / "sha256sum").chmod(0o755)
    async with memoh_go_server(dst, kind=kind) as peer, \
            memoh_trio.connect(peer.target) as client:
        rec = WithPath(client, f"{bin_dir}:{fault_path(tmp_path, kind, None)}")
        with trio.fail_after(120):
            report = await memoh_trio.migrate(src, rec, verify="sha256")  # type: ignore[arg-type]
    assert report.status == "migrated", (report.failures[:3], report.error)
    check_run(report, tmp_path / "src", dst)
