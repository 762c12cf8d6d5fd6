"""Renamed only once the container was asked to flush (issue 23, item 9).

A server without Exec (``memoh-trio serve --no-exec``) cannot be asked to ``sync``: the copy may
still be only in its page cache. The source is then kept, the report says why and names the
opt-out; with ``--rename-without-flush`` it is renamed and the report says it was not flushed.
Real processes: ``memoh-trio serve`` and ``memoh-trio migrate``, and Memoh's Go server.
(``--no-preserve``: modes and mtimes also need Exec; without it they fail the run anyway.)
"""
# ruff: noqa: ASYNC240  (tests inspect small local trees synchronously, on purpose)

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import tree_files
from peers import memoh_go_server, memoh_trio_server

MIGRATED = ".migrated"


async def run_cli(src: Path, target: str, *extra: str) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "memoh_trio", "migrate", str(src), "--target", target, *extra]
    with trio.fail_after(60):
        done = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True,
                                      check=False)
    return done.returncode, (done.stdout + done.stderr).decode()


async def migrate(src: Path, target: str, *extra: str) -> tuple[int, dict[str, Any], str]:
    code, out = await run_cli(src, target, "--json", *extra)
    report = json.JSONDecoder().raw_decode(out[out.index("{"):])[0]
    return code, report, out


def make_src(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    src = tmp_path / "bots" / "bot-a"
    files = {f"memory/n{i}.md": os.urandom(100 + i) for i in range(5)}
    files["db.sqlite"] = os.urandom(400_000)
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    return src, files


async def test_no_exec_server_keeps_the_source_unless_told(tmp_path: Path) -> None:
    src, files = make_src(tmp_path)
    root = tmp_path / "data"
    root.mkdir()
    async with memoh_trio_server(root, "--no-auth", "--no-exec", token=None) as peer:
        code, report, err = await migrate(src, peer.target, "--no-preserve")
        assert code == 1, (report, err)
        assert report["status"] == "incomplete" and report["flushed"] is False, report
        why = " ".join(f["error"] for f in report["failures"])
        assert "flush" in why and "--rename-without-flush" in why, report
        assert src.is_dir() and not Path(f"{src}{MIGRATED}").exists()
        assert tree_files(root) == files  # copied whole; only the rename waits

        code, out = await run_cli(src, peer.target, "--no-preserve", "--rename-without-flush")
        assert code == 0, out
        assert "migrated" in out and "not flushed" in out, out
    assert not src.exists() and tree_files(Path(f"{src}{MIGRATED}")) == files


@pytest.mark.memoh_go
async def test_a_server_with_exec_is_flushed_and_says_so(tmp_path: Path) -> None:
    src, files = make_src(tmp_path)
    root = tmp_path / "data"
    root.mkdir()
    async with memoh_go_server(root) as peer:
        code, report, out = await migrate(src, peer.target, "--rename-without-flush")
    assert code == 0 and report["flushed"] is True, (report, out)
    assert "not flushed" not in out
    assert tree_files(root) == files and tree_files(Path(f"{src}{MIGRATED}")) == files
