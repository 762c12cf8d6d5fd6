"""The peer processes themselves work (Memoh's Go server and migrator, our server as a child)."""

from __future__ import annotations

from pathlib import Path

import pytest
from peers import TEST_TOKEN, memoh_go_server, memoh_trio_server, run_memoh_go_seed

import memoh_trio


@pytest.mark.memoh_go
async def test_memoh_go_seed_into_memoh_go_server(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"hello\n")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 300)
    dst = tmp_path / "dst"
    dst.mkdir()
    async with memoh_go_server(dst) as peer:
        code, out, err = await run_memoh_go_seed(src, peer.target)
        assert code == 0, (out, err)
        assert "migrated=2 failed=0 renamed=true" in out
        async with memoh_trio.connect(peer.target) as client:
            entry = await client.stat("sub/b.bin")
    assert entry.size == 256 * 300
    assert (dst / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 300
    assert not src.exists() and (tmp_path / "src.migrated").is_dir()


async def test_memoh_trio_server_child(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    async with memoh_trio_server(tmp_path) as peer, \
            memoh_trio.connect(peer.target, token=TEST_TOKEN) as client:
        assert (await client.stat("f")).size == 1


def test_a_missing_peer_skips_with_its_reason_and_the_command() -> None:
    """Without Memoh's binaries (or ../shared), a peer test says why it skipped and what to
    run, not ``.../_pytest/python.py:187: Skipped`` (issue 26)."""
    import os
    import subprocess
    import sys

    from peers import ROOT

    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTEST_") and k != "MEMOH_TRIO_REQUIRE_PEERS"}
    env["MEMOH_GO_OUT"] = "/nonexistent"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "tests/test_peers.py::test_memoh_go_seed_into_memoh_go_server"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped" in done.stdout, done.stdout
    assert "Memoh's Go binaries not built" in done.stdout, done.stdout
    assert "build.sh --install" in done.stdout, done.stdout
