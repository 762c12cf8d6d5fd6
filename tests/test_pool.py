"""The per-bot connection pool (memoh_trio._pool) against real servers on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from memoh_trio import _errors
from memoh_trio._pool import Pool
from memoh_trio._server import serve


@dataclass
class Srv:
    target: str
    root: Path
    scope: trio.CancelScope


StartServer = Callable[[], Awaitable[Srv]]


@pytest.fixture
def start_server(tmp_path: Path, nursery: trio.Nursery) -> StartServer:
    count = 0

    async def start() -> Srv:
        nonlocal count
        count += 1
        root = tmp_path / f"root{count}"
        root.mkdir()
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[Any]) -> None:
            with scope:
                await serve(root, allow_unauthenticated=True, task_status=task_status)

        addr = await nursery.start(run)
        return Srv(str(addr), root, scope)

    return start


def dead_target() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


async def test_dials_lazily_and_reuses(start_server: StartServer) -> None:
    a, b = await start_server(), await start_server()
    async with Pool({"a": a.target, "b": b.target}) as pool:
        assert len(pool) == 0 and pool.open_channels == 0
        ca = await pool.get("a")
        assert "a" in pool and "b" not in pool
        assert await pool.get("a") is ca
        cb = await pool.get("b")
        assert cb is not ca and cb.target == b.target
        await ca.write_file("x", b"for a")
        await cb.write_file("x", b"for b")
        assert pool.open_channels == 2
    assert (a.root / "x").read_bytes() == b"for a"
    assert (b.root / "x").read_bytes() == b"for b"
    assert ca.closed and cb.closed and pool.open_channels == 0


async def test_concurrent_gets_dial_once(start_server: StartServer) -> None:
    a = await start_server()
    got: list[Any] = []
    async with Pool({"a": a.target}) as pool:
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(lambda: _append(got, pool.get("a")))
        assert len(got) == 10 and all(c is got[0] for c in got)
        assert pool.open_channels == 1


async def _append(out: list[Any], aw: Awaitable[Any]) -> None:
    out.append(await aw)


async def test_set_address_evicts(start_server: StartServer) -> None:
    a, b = await start_server(), await start_server()
    async with Pool({"bot": a.target}) as pool:
        old = await pool.get("bot")
        pool.set_address("bot", a.target)  # unchanged: kept
        assert await pool.get("bot") is old
        pool.set_address("bot", b.target)
        await trio.lowlevel.checkpoint()
        assert old.closed and "bot" not in pool
        new = await pool.get("bot")
        assert new is not old and new.target == b.target
        await new.mkdir("moved")
        assert pool.open_channels == 1
    assert (b.root / "moved").is_dir()


async def test_address_function_change_evicts(start_server: StartServer) -> None:
    a, b = await start_server(), await start_server()
    where = {"bot": a.target}
    async with Pool(lambda bot: where[bot]) as pool:
        first = await pool.get("bot")
        where["bot"] = b.target
        second = await pool.get("bot")
        assert second is not first and first.closed and second.target == b.target


async def test_broken_connection_is_evicted(start_server: StartServer) -> None:
    a = await start_server()
    # Started before the pool: a server started inside the block would share (and outlive)
    # the pool's asyncio loop.
    b = await start_server()
    addresses = {"bot": a.target}
    async with Pool(addresses) as pool:
        client = await pool.get("bot")
        await client.mkdir("one")
        a.scope.cancel()  # the container goes away
        await trio.sleep(0.1)
        with pytest.raises(_errors.Unavailable):
            await client.mkdir("two")
        assert "bot" not in pool and client.closed and pool.open_channels == 0
        addresses["bot"] = b.target  # recreated with a new address
        again = await pool.get("bot")
        await again.mkdir("three")
    assert (b.root / "three").is_dir()


async def test_unreachable_caches_nothing() -> None:
    async with Pool({"bot": dead_target()}) as pool:
        with trio.fail_after(5), pytest.raises(_errors.Unavailable, match="connection refused"):
            await pool.get("bot")
        assert len(pool) == 0 and pool.open_channels == 0


async def test_unknown_bot_and_bad_address() -> None:
    async with Pool({"bot": "nonsense"}) as pool:
        with pytest.raises(_errors.ConfigError, match="no address"):
            await pool.get("other")
        with pytest.raises(_errors.ConfigError):
            await pool.get("bot")
        with pytest.raises(_errors.ConfigError):
            pool.set_address("bot", "also nonsense")


async def test_evicted_client_closes_after_running_call(start_server: StartServer) -> None:
    a, b = await start_server(), await start_server()
    async with Pool({"bot": a.target}) as pool:
        client = await pool.get("bot")
        result: list[int] = []

        async def slow_call() -> None:
            res = await client.exec("sleep 0.3; echo done")
            result.append(res.exit_code)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_call)
            await trio.sleep(0.1)
            pool.set_address("bot", b.target)
            assert not client.closed  # still serving its call
            assert pool.open_channels == 1
        assert result == [0]
        assert client.closed and pool.open_channels == 0
        await pool.evict("bot")  # nothing to evict: fine


async def test_evict_and_close_everything_on_cancel(start_server: StartServer) -> None:
    a = await start_server()
    with trio.move_on_after(0.3):
        async with Pool({"bot": a.target}) as pool:
            client = await pool.get("bot")
            await pool.evict("bot")
            assert client.closed and "bot" not in pool
            client = await pool.get("bot")
            await trio.sleep_forever()
    assert client.closed
    with pytest.raises(RuntimeError):
        await pool.get("bot")


async def test_body_exception_propagates_unwrapped(start_server: StartServer) -> None:
    a = await start_server()
    with pytest.raises(KeyError):
        async with Pool({"bot": a.target}) as pool:
            await pool.get("bot")
            raise KeyError("mine")
