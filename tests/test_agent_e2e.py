"""The container agent end to end (issue 25): started once through Exec, in Memoh's Go server
and in memoh-trio's own, both under ``run-in.sh busybox-python`` (Memoh's bot image: busybox
tools + python3), with a hostile process in the container, a crashing agent, a cut stream and
another protocol version."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from peers import TEST_TOKEN, memoh_go_server, memoh_trio_server

import memoh_trio
from memoh_trio._agent import PROTOCOL_VERSION, source
from memoh_trio._agent.agent import CHECK_FAILED
from memoh_trio._agent.driver import AgentCrashed, AgentUnavailable, AgentVersionMismatch
from memoh_trio._agent.session import Agent, open_agent

T0 = 1_577_836_800_123_456_789
SERVERS = [pytest.param("memoh-go", marks=pytest.mark.memoh_go), "memoh-trio"]


@contextlib.asynccontextmanager
async def server(name: str, root: Path, kind: str = "busybox-python"
                 ) -> AsyncIterator[tuple[memoh_trio.Client, trio.Process]]:
    if name == "memoh-go":
        async with memoh_go_server(root, kind=kind) as peer, \
                memoh_trio.connect(peer.target) as client:
            yield client, peer.process
        return
    async with memoh_trio_server(root, kind=kind) as peer, \
            memoh_trio.connect(peer.target, token=TEST_TOKEN) as client:
        yield client, peer.process


def tree(n: int) -> dict[str, bytes]:
    return {f"d/s{i % 7}/m{i:03d}.json": b'{"n": %d}' % i * (i % 13 + 1) for i in range(n)}


async def push(agent: Agent, files: dict[str, bytes], batch: int = 50) -> list[str]:
    """The files in batches (each written to a temporary, then placed); the failed paths."""
    failed: list[str] = []
    items = list(files.items())
    for start in range(0, len(items), batch):
        part = items[start:start + batch]
        entries = [{"path": f"{p.rpartition('/')[0]}/.memoh-tmp-{i}", "size": len(data),
                    "final": p, "mode": 0o640, "mtime_ns": T0 + i}
                   for i, (p, data) in enumerate(part, start)]
        records = await agent.files(entries, b"".join(d for _, d in part))
        failed += [r.path for r in records if not r.ok]
    return failed


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("name", SERVERS)
async def test_the_agent_places_a_tree_in_busybox_python(name: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    files = tree(120)
    big = os.urandom(3 * 1024 * 1024 + 7)
    async with server(name, root) as (client, _):
        with trio.fail_after(60):
            async with open_agent(client, "bots/b1") as agent:
                assert agent.info["version"] == PROTOCOL_VERSION
                assert agent.info["python"].startswith("3.")
                assert await push(agent, files) == []
                rec = await agent.write("d/.memoh-big", big)
                assert rec.ok and rec.extra["size"] == len(big)
                placed = await agent.place([{"tmp": "d/.memoh-big", "path": "media/big.bin",
                                             "size": len(big), "mode": 0o600,
                                             "mtime_ns": T0}])
                assert placed[0].ok, placed
                links = await agent.symlink([{"path": "media/link", "target": "big.bin",
                                              "mtime_ns": T0 + 1}])
                assert links[0].ok, links
                metas = await agent.meta([{"path": "d", "mode": 0o750, "mtime_ns": T0 + 2}])
                assert metas[0].ok, metas
                flushed = await agent.flush()
                assert flushed.header["how"] == "syncfs"  # musl/glibc libc has syncfs
    dest = root / "bots" / "b1"
    got = files_under(dest)
    assert got == {**files, "media/big.bin": big}
    st = (dest / "media/big.bin").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o600, T0)
    assert (dest / "d/s3/m003.json").stat().st_mtime_ns == T0 + 3
    assert os.readlink(dest / "media/link") == "big.bin"
    assert (stat.S_IMODE((dest / "d").stat().st_mode), (dest / "d").stat().st_mtime_ns) \
        == (0o750, T0 + 2)


async def container_sh(client: memoh_trio.Client, script: str) -> None:
    """A process in the container (a second Exec beside the agent's)."""
    result = await client.exec(script)
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("name", SERVERS)
async def test_a_directory_swapped_for_a_symlink_during_placement(name: str,
                                                                  tmp_path: Path) -> None:
    # A hostile process in the container: (1) once, between the temporaries' writes and their
    # placement, moves the destination directory aside and puts a symlink to a directory outside
    # the tree in its place; (2) in a loop, while 400 files are placed. Nothing may land outside;
    # (1)'s entries fail, and a rerun once the process is gone migrates everything.
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "passwd").write_bytes(b"root:x:0:0\n")
    files = tree(40)
    async with server(name, root) as (client, _):
        with trio.fail_after(90):
            async with open_agent(client, "bot") as agent:
                entries = [{"path": f"d/s{i % 7}/.memoh-tmp-{i}", "size": len(data)}
                           for i, data in enumerate(files.values())]
                written = await agent.files(entries, b"".join(files.values()))
                assert all(r.ok for r in written)
                await container_sh(client, f"cd bot && mv d d.aside && ln -s {outside} d")
                placed = await agent.place([{**e, "tmp": e["path"], "path": p}
                                            for e, p in zip(entries, files, strict=True)])
                assert [r.ok for r in placed] == [False] * len(files)
                assert all("a symlink is in the way at 'd'" in (r.error or "") for r in placed)
                assert files_under(outside) == {"passwd": b"root:x:0:0\n"}
                await container_sh(client, "cd bot && rm d && rm -r d.aside")

                many = tree(400)
                swapper = ("cd bot; while [ ! -e ../stop ]; do mv d d.x 2>/dev/null; "
                           f"ln -s {outside} d 2>/dev/null; rm -f d 2>/dev/null; "
                           "mv d.x d 2>/dev/null; done")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(container_sh, client, swapper)
                    await trio.sleep(0.2)
                    raced = await push(agent, many, batch=20)
                    (root / "stop").write_bytes(b"")
                assert files_under(outside) == {"passwd": b"root:x:0:0\n"}, raced
            # The rerun, the hostile process gone: everything in place.
            async with open_agent(client, "bot") as agent:
                assert await push(agent, many) == []
    got = files_under(root / "bot")
    assert {k: got[k] for k in many} == many


@pytest.mark.parametrize("name", SERVERS)
async def test_bytes_by_writeraw_at_the_top_placed_by_the_agent(name: str,
                                                                tmp_path: Path) -> None:
    # A way for the lifecycle to keep WriteRaw for the bulk bytes: the temporaries go to the
    # destination's top directory (no directory on their way a process could swap), and the
    # agent moves each into its directory through descriptors. A swap of that directory fails
    # the entries; nothing reaches the link's target.
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "bot").mkdir(parents=True)
    outside.mkdir()
    big = {f"media/att-{i}.bin": os.urandom(600 * 1024 + i) for i in range(3)}
    async with server(name, root) as (client, _):
        with trio.fail_after(60):
            async with open_agent(client, "bot") as agent:
                for round_ in ("swapped", "clean"):
                    for i, data in enumerate(big.values()):
                        written = await client.write_raw(f"bot/.memoh-tmp-{round_}-{i}", data)
                        assert written.bytes_written == len(data)
                    assert (await agent.mkdir([{"path": "media"}]))[0].ok
                    if round_ == "swapped":
                        await container_sh(client, f"cd bot && mv media media.aside && "
                                                   f"ln -s {outside} media")
                    placed = await agent.place([
                        {"tmp": f".memoh-tmp-{round_}-{i}", "path": p, "size": len(d),
                         "mode": 0o644, "mtime_ns": T0}
                        for i, (p, d) in enumerate(big.items())])
                    if round_ == "swapped":
                        assert [r.ok for r in placed] == [False] * 3, placed
                        assert list(outside.iterdir()) == []
                        assert (await agent.delete([f".memoh-tmp-swapped-{i}"
                                                    for i in range(3)]))[0].ok
                        await container_sh(client, "cd bot && rm media && rm -r media.aside")
                    else:
                        assert all(r.ok for r in placed), placed
    assert files_under(root / "bot") == big


@pytest.mark.parametrize("name", SERVERS)
async def test_contents_checked_by_sha256_and_hashed_in_the_container(name: str,
                                                                      tmp_path: Path) -> None:
    # Protocol v2: WriteRaw's bytes placed only when their sha256 is the one sent; a batch of
    # files checked as written; hash reads regular files only (a link is refused, not followed).
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "bot").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(b"not yours")
    data = os.urandom(2 * 1024 * 1024 + 3)
    digest = hashlib.sha256(data).hexdigest()
    async with server(name, root) as (client, _):
        with trio.fail_after(60):
            async with open_agent(client, "bot") as agent:
                for tmp in (".memoh-tmp-0", ".memoh-tmp-1"):
                    assert (await client.write_raw(f"bot/{tmp}", data)).bytes_written \
                        == len(data)
                wrong = hashlib.sha256(data + b"!").hexdigest()
                bad, good = await agent.place([
                    {"tmp": ".memoh-tmp-0", "path": "media/a.bin", "size": len(data),
                     "sha256": wrong},
                    {"tmp": ".memoh-tmp-1", "path": "media/b.bin", "size": len(data),
                     "sha256": digest, "mode": 0o600, "mtime_ns": T0}])
                assert not bad.ok and (bad.error or "").startswith(f"{CHECK_FAILED}: "), bad
                assert good.ok and good.extra["sha256"] == digest, good
                batch = await agent.files(
                    [{"path": "d/.memoh-tmp-2", "size": 2, "final": "d/ok",
                      "sha256": hashlib.sha256(b"ok").hexdigest()},
                     {"path": "d/.memoh-tmp-3", "size": 2, "final": "d/ko",
                      "sha256": hashlib.sha256(b"??").hexdigest()}], b"okko")
                assert [r.ok for r in batch] == [True, False], batch
                assert (batch[1].error or "").startswith(f"{CHECK_FAILED}: ")
                await container_sh(client, f"ln -s {outside}/secret bot/media/link")
                hashed = await agent.hash(["media/b.bin", "d/ok", "media/link", "media/a.bin"])
    assert [r.ok for r in hashed] == [True, True, False, False], hashed
    assert hashed[0].extra == {"sha256": digest, "size": len(data)}
    assert hashed[1].extra == {"sha256": hashlib.sha256(b"ok").hexdigest(), "size": 2}
    assert "symlink" in (hashed[2].error or "") and "sha256" not in hashed[2].extra
    assert not (hashed[2].error or "").startswith(CHECK_FAILED)
    assert hashed[3].extra == {"absent": True}
    # a failed place leaves its temporary to the client; a failed file of a batch is the
    # agent's own temporary, removed
    assert files_under(root / "bot") == {"media/b.bin": data, "d/ok": b"ok",
                                         ".memoh-tmp-0": data}
    assert (root / "bot/media/b.bin").stat().st_mtime_ns == T0


async def test_a_crashing_agent_is_a_clear_failure(tmp_path: Path) -> None:
    # An agent whose mkdir raises something it does not handle: its traceback's last line.
    broken = source().replace('if __name__ == "__main__":',
                              'Agent.mkdir = lambda self, e: 1 // 0\n\n'
                              'if __name__ == "__main__":')
    async with server("memoh-trio", tmp_path) as (client, _):
        with pytest.raises(AgentCrashed, match=r"exit 1 .*ZeroDivisionError"):
            async with open_agent(client, "x", source=broken) as agent:
                await agent.mkdir([{"path": "a"}])


@pytest.mark.parametrize("name", SERVERS)
async def test_an_agent_killed_in_the_container(name: str, tmp_path: Path) -> None:
    async with server(name, tmp_path) as (client, _):
        with trio.fail_after(30), pytest.raises(AgentCrashed, match="ended with exit") as err:
            async with open_agent(client, "x") as agent:
                assert (await agent.mkdir([{"path": "a"}]))[0].ok
                await container_sh(client, f"kill -9 {agent.info['pid']}")
                await agent.mkdir([{"path": "b"}])
        # Memoh's server reports a killed command as -1, ours as 128 + 9
        assert "exit -1 " in str(err.value) or "exit 137 " in str(err.value)
        assert not (tmp_path / "x" / "b").exists()


@pytest.mark.parametrize("name", SERVERS)
async def test_a_cut_stream_is_a_clear_failure(name: str, tmp_path: Path) -> None:
    async with server(name, tmp_path) as (client, process):
        with trio.fail_after(30), pytest.raises(AgentCrashed, match="cut"):
            async with open_agent(client, "x") as agent:
                assert (await agent.mkdir([{"path": "a"}]))[0].ok
                process.kill()  # the server goes away with the agent's stream
                await agent.mkdir([{"path": "b"}])


@pytest.mark.parametrize("name", SERVERS)
async def test_another_protocol_version_is_a_clear_failure(name: str, tmp_path: Path) -> None:
    other = source().replace(f"PROTOCOL_VERSION = {PROTOCOL_VERSION}\n", "PROTOCOL_VERSION = 99\n")
    assert other != source()
    async with server(name, tmp_path) as (client, _):
        with trio.fail_after(30), pytest.raises(AgentVersionMismatch, match="version 99"):
            async with open_agent(client, "x", source=other):
                pytest.fail("the block must not run")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", SERVERS)
async def test_no_python3_in_the_container(name: str, tmp_path: Path) -> None:
    async with server(name, tmp_path, kind="busybox") as (client, _):
        with trio.fail_after(30), pytest.raises(AgentUnavailable, match="no python3"):
            async with open_agent(client, "x"):
                pytest.fail("the block must not run")


@pytest.mark.parametrize("name", SERVERS)
async def test_a_cancelled_caller_leaves_no_agent_behind(name: str, tmp_path: Path) -> None:
    # Cancelled while it writes 4 MiB files one after another: the block ends within its own
    # deadline, the agent's stdin is closed, and its process is gone.
    pid = 0
    async with server(name, tmp_path) as (client, _):
        with trio.move_on_after(5) as outer:  # well under ENDING_TIMEOUT (10 s)
            with trio.move_on_after(0.5) as inner:
                async with open_agent(client, "x") as agent:
                    pid = agent.info["pid"]
                    data = os.urandom(4 * 1024 * 1024)
                    for i in range(10**6):
                        assert (await agent.write(f"f{i}", data)).ok
        assert inner.cancelled_caught and not outer.cancelled_caught
        with trio.fail_after(10):
            while True:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                await trio.sleep(0.05)
