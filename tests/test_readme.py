"""The README's examples work as written: its quick-start commands and its library example, run
against Memoh's own Go server (the server a reader migrates into), with the README's addresses
and data root replaced by the test's.

The examples are read out of README.md, not copied here, so an example that stops working, or
one edited into something that does not run, fails this test.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from peers import Peer, memoh_go_server

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: What the README names, and what stands for it here.
README_DATA_ROOT = "/var/lib/memoh/data"
README_ADDRESSES = ("10.88.0.12:9090", "10.88.0.13:9090", "10.88.0.14:9090")
README_BOTS = ("bot-7f3a9c2e", "bot-51d0b8aa", "bot-e02c4f19")

pytestmark = pytest.mark.memoh_go


def _section(text: str, heading: str) -> str:
    return text.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _make_bots(data_root: Path) -> None:
    for bot in README_BOTS:
        d = data_root / "bots" / bot
        (d / "memory" / "notes").mkdir(parents=True)
        (d / "media").mkdir()
        (d / "memory" / "notes" / "2026-11-30.md").write_text(f"# notes of {bot}\n")
        (d / "media" / "avatar.png").write_bytes(bytes(range(256)) * 1200)
        (d / "state.json").write_text('{"model": "gpt"}\n')
        (d / "empty.log").write_bytes(b"")
        (d / "notes").symlink_to("memory/notes")


@contextlib.asynccontextmanager
async def _containers(tmp: Path) -> AsyncIterator[list[Peer]]:
    """One Memoh Go server per README address, each over its own fresh root."""
    async with contextlib.AsyncExitStack() as stack:
        peers = []
        for i in range(len(README_ADDRESSES)):
            root = tmp / f"container-{i}"
            root.mkdir()
            peers.append(await stack.enter_async_context(memoh_go_server(root)))
        yield peers


def _localize(text: str, data_root: Path, peers: list[Peer]) -> str:
    text = text.replace(README_DATA_ROOT, str(data_root))
    for address, peer in zip(README_ADDRESSES, peers, strict=True):
        text = text.replace(address, peer.target)
    return text


def _check_migrated(data_root: Path, peers: list[Peer]) -> None:
    for bot, peer in zip(README_BOTS, peers, strict=True):
        assert not (data_root / "bots" / bot).exists()
        assert (data_root / "bots" / f"{bot}.migrated").is_dir()
        root = peer.root
        assert (root / "memory" / "notes" / "2026-11-30.md").read_text() == f"# notes of {bot}\n"
        assert (root / "media" / "avatar.png").read_bytes() == bytes(range(256)) * 1200
        assert (root / "empty.log").read_bytes() == b""
        assert (root / "notes").is_symlink()


async def test_readme_quick_start(tmp_path: Path) -> None:
    text = _section(README.read_text(), "Quick start")
    data_root = tmp_path / "data"
    _make_bots(data_root)
    async with _containers(tmp_path) as peers:
        targets = json.loads(_localize(_blocks(text, "json")[0], data_root, peers))
        assert sorted(targets) == sorted(README_BOTS)
        # The README runs `--targets targets.json` from the directory that holds it.
        (tmp_path / "targets.json").write_text(json.dumps(targets))
        commands = [line for block in _blocks(text, "sh") for line in block.splitlines()
                    if line.startswith("memoh-trio migrate")]
        assert any("--dry-run" in c for c in commands)
        assert any(c.startswith("memoh-trio migrate-bot") for c in commands)
        assert any(c.startswith("memoh-trio migrate-all --data-root") for c in commands)
        for command in commands:
            argv = shlex.split(_localize(command, data_root, peers))
            proc = await trio.run_process(
                [sys.executable, "-m", "memoh_trio", *argv[1:]], cwd=tmp_path,
                capture_stdout=True, capture_stderr=True, check=False)
            out = proc.stdout.decode() + proc.stderr.decode()
            assert proc.returncode == 0, f"{command}\n{out}"
            if "--dry-run" in argv:
                assert "dry-run" in out and "renamed" not in out, out
            if argv[1] == "migrate-bot" and "--dry-run" not in argv:
                assert "migrated" in out and "renamed" in out, out
        _check_migrated(data_root, peers)


async def test_readme_library_example(tmp_path: Path) -> None:
    code = _blocks(_section(README.read_text(), "Library"), "python")[0]
    data_root = tmp_path / "data"
    _make_bots(data_root)
    async with _containers(tmp_path) as peers:
        proc = await trio.run_process([sys.executable, "-c", _localize(code, data_root, peers)],
                                      capture_stdout=True, capture_stderr=True, check=False)
        out = proc.stdout.decode()
        assert proc.returncode == 0, out + proc.stderr.decode()
        _check_migrated(data_root, peers)
    lines = out.splitlines()
    # The progress lines, then one line per bot.
    assert any(re.fullmatch(r"\d+/\d+ files, [\d,]+/[\d,]+ bytes", line) for line in lines), out
    first = f"{README_BOTS[0]} migrated {data_root}/bots/{README_BOTS[0]}.migrated"
    assert first in lines, out
    for bot in README_BOTS[1:]:
        assert f"{bot} migrated 4 " in lines, out  # four files; no error
