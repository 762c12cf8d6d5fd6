"""The fault proxy itself, against a plain Trio echo / sink server on 127.0.0.1:0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from faultproxy import DOWN, UP, FaultProxy, open_fault_proxy


@asynccontextmanager
async def echo_server() -> AsyncIterator[tuple[str, int]]:
    async def echo(stream: trio.SocketStream) -> None:
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, echo, 0)
        _host, port = listeners[0].socket.getsockname()[:2]
        yield ("127.0.0.1", port)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def proxied() -> AsyncIterator[tuple[FaultProxy, trio.SocketStream]]:
    async with echo_server() as addr, open_fault_proxy(addr) as proxy:
        stream = await trio.open_tcp_stream(*proxy.address)
        async with stream:
            yield proxy, stream


async def receive_exactly(stream: trio.SocketStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = await stream.receive_some(n - len(buf))
        if not data:
            break
        buf += data
    return bytes(buf)


async def receive_until_closed(stream: trio.SocketStream) -> bytes:
    buf = bytearray()
    try:
        while data := await stream.receive_some(65536):
            buf += data
    except trio.BrokenResourceError:
        pass
    return bytes(buf)


async def test_forwards_both_ways_and_counts() -> None:
    with trio.fail_after(5):
        async with proxied() as (proxy, stream):
            payload = bytes(range(256)) * 1000
            await stream.send_all(payload)
            assert await receive_exactly(stream, len(payload)) == payload
            assert proxy.bytes_up == proxy.bytes_down == len(payload)
            assert proxy.connections == 1 and proxy.live == 1 and proxy.cuts == 0
            assert proxy.target == f"127.0.0.1:{proxy.address[1]}"


async def test_string_upstream_and_eof_propagates() -> None:
    with trio.fail_after(5):
        async with echo_server() as addr, open_fault_proxy(f"{addr[0]}:{addr[1]}") as proxy:
            stream = await trio.open_tcp_stream(*proxy.address)
            await stream.send_all(b"hello")
            await stream.send_eof()
            assert await receive_until_closed(stream) == b"hello"
            await stream.aclose()


async def test_delay_holds_each_read() -> None:
    with trio.fail_after(5):
        async with proxied() as (proxy, stream):
            proxy.delay = 0.2
            start = trio.current_time()
            await stream.send_all(b"x")
            assert await receive_exactly(stream, 1) == b"x"
            # Held once going up and once coming down.
            assert trio.current_time() - start >= 0.4
            proxy.delay = 0
            start = trio.current_time()
            await stream.send_all(b"y")
            assert await receive_exactly(stream, 1) == b"y"
            assert trio.current_time() - start < 0.4


async def test_stall_then_resume() -> None:
    with trio.fail_after(5):
        async with proxied() as (proxy, stream):
            proxy.stall()
            assert proxy.stalled
            await stream.send_all(b"held")
            with trio.move_on_after(0.3) as scope:
                await stream.receive_some(10)
            assert scope.cancelled_caught, "a stalled proxy forwarded data"
            assert proxy.bytes_up == 0
            proxy.resume()
            assert await receive_exactly(stream, 4) == b"held"


async def test_stall_applies_to_a_read_already_pending() -> None:
    with trio.fail_after(5):
        async with proxied() as (proxy, stream):
            await stream.send_all(b"a")
            assert await receive_exactly(stream, 1) == b"a"
            # Both pumps are now blocked in receive_some; stalling must still hold new data.
            proxy.stall()
            await stream.send_all(b"b")
            with trio.move_on_after(0.3) as scope:
                await stream.receive_some(10)
            assert scope.cancelled_caught
            proxy.clear()
            assert await receive_exactly(stream, 1) == b"b"


@pytest.mark.parametrize("direction", [UP, DOWN])
async def test_stall_after_exact_byte_count(direction: str) -> None:
    with trio.fail_after(5):
        async with proxied() as (proxy, stream):
            proxy.stall_after(direction, 700)  # type: ignore[arg-type]
            await stream.send_all(b"s" * 2000)

            def forwarded() -> int:
                return proxy.bytes_up if direction == UP else proxy.bytes_down

            while forwarded() < 700:  # noqa: ASYNC110
                await trio.sleep(0.01)
            await trio.sleep(0.3)
            # A stall holds both directions: exactly 700 bytes went through, then nothing.
            assert forwarded() == 700
            assert proxy.stalled and proxy.live == 1
            proxy.resume()
            assert await receive_exactly(stream, 2000) == b"s" * 2000
            # Applies once.
            await stream.send_all(b"t" * 3000)
            assert await receive_exactly(stream, 3000) == b"t" * 3000


@pytest.mark.parametrize("direction", [UP, DOWN])
async def test_cut_after_exact_byte_count(direction: str) -> None:
    with trio.fail_after(5):
        async with proxied() as (proxy, stream):
            proxy.cut_after(direction, 1000)  # type: ignore[arg-type]
            await stream.send_all(b"z" * 5000)
            got = await receive_until_closed(stream)
            # Going up, the cut can come before the echo of the 1000 bytes that got through.
            assert (b"z" * 1000).startswith(got)
            if direction == DOWN:
                assert got == b"z" * 1000
            assert proxy.cuts == 1 and proxy.live == 0
            if direction == UP:
                assert proxy.bytes_up == 1000
            else:
                assert proxy.bytes_down == 1000
            with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)):
                for _ in range(50):
                    await stream.send_all(b"more" * 1000)
                    await trio.sleep(0.01)
            # The rule applies once: a new connection goes through untouched.
            again = await trio.open_tcp_stream(*proxy.address)
            async with again:
                await again.send_all(b"q" * 3000)
                assert await receive_exactly(again, 3000) == b"q" * 3000


async def test_cut_now_with_rst_and_refuse() -> None:
    with trio.fail_after(5):
        async with proxied() as (proxy, stream):
            await stream.send_all(b"1")
            assert await receive_exactly(stream, 1) == b"1"
            proxy.cut()
            assert proxy.cuts == 1
            with pytest.raises(trio.BrokenResourceError):
                data = await stream.receive_some(10)
                assert data == b""  # a FIN would be a clean EOF, an RST is an error
                raise trio.BrokenResourceError
            proxy.refuse = True
            refused = await trio.open_tcp_stream(*proxy.address)
            assert await receive_until_closed(refused) == b""
            await refused.aclose()
            proxy.clear()
            fresh = await trio.open_tcp_stream(*proxy.address)
            async with fresh:
                await fresh.send_all(b"ok")
                assert await receive_exactly(fresh, 2) == b"ok"
            assert proxy.connections == 3


async def test_upstream_down_closes_client() -> None:
    with trio.fail_after(5):
        # A port with nothing listening: the proxy accepts, fails upstream, closes the client.
        sock = trio.socket.socket()
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        async with open_fault_proxy(("127.0.0.1", port)) as proxy:
            stream = await trio.open_tcp_stream(*proxy.address)
            assert await receive_until_closed(stream) == b""
            await stream.aclose()


async def test_cut_after_rejects_negative() -> None:
    async with echo_server() as addr, open_fault_proxy(addr) as proxy:
        with pytest.raises(ValueError):
            proxy.cut_after(UP, -1)
        with pytest.raises(ValueError):
            proxy.stall_after(DOWN, -1)
