"""memoh_trio.testing: the in-process server embedders use in their own tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import memoh_trio
from memoh_trio import testing


async def test_running_server_with_its_own_token(tmp_path: Path) -> None:
    async with testing.running_server(tmp_path) as server:
        assert server.token and len(server.token) >= 32
        assert server.target == str(server.address) and server.root == str(tmp_path)
        async with server.connect() as client:
            await client.write_file("a.txt", b"hi")
            assert (await client.exec("cat a.txt")).stdout == b"hi"
        async with memoh_trio.connect(server.target) as anonymous:
            with pytest.raises(memoh_trio.Unauthenticated):
                await anonymous.stat("a.txt")
    assert (tmp_path / "a.txt").read_bytes() == b"hi"


async def test_running_server_passes_serve_options(tmp_path: Path) -> None:
    async with testing.running_server(tmp_path, token="fixed", allow_exec=False) as server, \
            server.connect() as client:
        assert server.token == "fixed"
        with pytest.raises(memoh_trio.Unimplemented):
            await client.exec("true")


def test_temp_entries_finds_every_kind(tmp_path: Path) -> None:
    assert testing.TEMP_PREFIXES == (".memoh-tmp-", ".memoh-part-", ".memoh-tar-")
    (tmp_path / "d" / ".memoh-tar-x").mkdir(parents=True)
    (tmp_path / ".memoh-tmp-1").write_bytes(b"")
    (tmp_path / "d" / ".memoh-part-2").write_bytes(b"")
    (tmp_path / "d" / "memoh-tmp-not").write_bytes(b"")
    assert testing.temp_entries(tmp_path) == sorted([
        os.path.join(tmp_path, ".memoh-tmp-1"), os.path.join(tmp_path, "d", ".memoh-part-2"),
        os.path.join(tmp_path, "d", ".memoh-tar-x")])
