"""A Trio TCP fault proxy for tests: sits between a client and a server and misbehaves on demand.

Usage::

    async with open_fault_proxy(("127.0.0.1", server_port)) as proxy:
        ...  # connect the client to proxy.target ("127.0.0.1:PORT") instead of the server
        proxy.delay = 0.05             # every forwarded read is held 50 ms (both directions)
        proxy.stall()                  # stop forwarding (bytes stay queued in the kernel)
        proxy.resume()
        proxy.cut_after(UP, 100_000)   # cut every connection once 100 000 more bytes went up
        proxy.stall_after(UP, 100_000) # stall once 100 000 more bytes went up
        proxy.cut()                    # cut every connection now
        proxy.refuse = True            # new connections are closed at once

``UP`` is client → server, ``DOWN`` server → client. Every knob can be changed while the proxy
runs; the pumps look at them before each read is forwarded. A cut closes both sockets of every
live connection with SO_LINGER 0 (an RST, like a crashed peer) unless ``rst=False`` is passed.
``bytes_up`` / ``bytes_down`` / ``connections`` / ``cuts`` count what happened, for assertions.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

import trio

Direction = Literal["up", "down"]
UP: Direction = "up"
DOWN: Direction = "down"

#: Bytes read from a socket at a time.
READ_SIZE = 64 * 1024


@dataclass(eq=False)
class _Conn:
    client: trio.SocketStream
    server: trio.SocketStream
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def abort(self, rst: bool) -> None:
        for stream in (self.client, self.server):
            if rst:
                with contextlib.suppress(OSError):
                    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                             struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                stream.socket.close()
        self.scope.cancel()


class FaultProxy:
    """The proxy; build it with :func:`open_fault_proxy`.

    Attributes:
        address: ``(host, port)`` the proxy listens on (127.0.0.1).
        delay: seconds each forwarded read waits before being sent on (0: none).
        refuse: close new connections as soon as they are accepted.
        bytes_up, bytes_down: bytes forwarded in each direction since start.
        connections: connections accepted; cuts: connections cut.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self.delay = 0.0
        self.refuse = False
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0
        self.cuts = 0
        self._flowing = trio.Event()
        self._flowing.set()
        self._budget: dict[Direction, int | None] = {UP: None, DOWN: None}
        self._stall_budget: dict[Direction, int | None] = {UP: None, DOWN: None}
        self._rst = True
        self._conns: set[_Conn] = set()

    @property
    def target(self) -> str:
        """``"127.0.0.1:PORT"`` to give a client."""
        return f"{self.address[0]}:{self.address[1]}"

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    @property
    def live(self) -> int:
        """Connections currently open through the proxy."""
        return len(self._conns)

    # ------------------------------------------------------------------ controls

    def stall(self) -> None:
        """Stop forwarding in both directions until :meth:`resume` (connections stay open)."""
        if self._flowing.is_set():
            self._flowing = trio.Event()

    def resume(self) -> None:
        self._flowing.set()

    def cut_after(self, direction: Direction, nbytes: int, *, rst: bool = True) -> None:
        """Cut every connection once ``nbytes`` more bytes were forwarded in ``direction``
        (exactly that many get through). Applies once, then clears."""
        if nbytes < 0:
            raise ValueError("nbytes must be >= 0")
        self._budget[direction] = nbytes
        self._rst = rst

    def stall_after(self, direction: Direction, nbytes: int) -> None:
        """Stall (as :meth:`stall`) once ``nbytes`` more bytes were forwarded in ``direction``
        (exactly that many get through). Applies once, then clears."""
        if nbytes < 0:
            raise ValueError("nbytes must be >= 0")
        self._stall_budget[direction] = nbytes

    def clear(self) -> None:
        """Remove every fault: no delay, flowing, no pending cut or stall, accepting."""
        self.delay = 0.0
        self.refuse = False
        self._budget = {UP: None, DOWN: None}
        self._stall_budget = {UP: None, DOWN: None}
        self.resume()

    def cut(self, *, rst: bool = True) -> None:
        """Cut every live connection now."""
        for conn in list(self._conns):
            self._cut(conn, rst)

    def _cut(self, conn: _Conn, rst: bool, *, fault: bool = True) -> None:
        if conn in self._conns:
            self._conns.discard(conn)
            if fault:
                self.cuts += 1
        conn.abort(rst)

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[FaultProxy] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        listener = listeners[0]
        sockname = listener.socket.getsockname()
        self.address = (str(sockname[0]), int(sockname[1]))
        async with trio.open_nursery() as nursery:
            try:
                task_status.started(self)
                await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)
            finally:
                self.cut()

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        if self.refuse:
            await trio.aclose_forcefully(client)
            return
        try:
            server = await trio.open_tcp_stream(*self.upstream)
        except OSError:
            await trio.aclose_forcefully(client)
            return
        conn = _Conn(client, server)
        self._conns.add(conn)
        try:
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, conn, client, server, UP)
                    nursery.start_soon(self._pump, conn, server, client, DOWN)
        finally:
            self._conns.discard(conn)
            with contextlib.suppress(OSError):
                client.socket.close()
            with contextlib.suppress(OSError):
                server.socket.close()

    async def _pump(self, conn: _Conn, src: trio.SocketStream, dst: trio.SocketStream,
                    direction: Direction) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await src.receive_some(READ_SIZE)
                if not data:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await dst.send_eof()
                    return
                if self.delay:
                    await trio.sleep(self.delay)
                # A stall set while this read was pending holds the data too.
                await self._flowing.wait()
                stall_budget = self._stall_budget[direction]
                if stall_budget is not None and len(data) >= stall_budget:
                    self._stall_budget[direction] = None
                    head, data = data[:stall_budget], data[stall_budget:]
                    await self._forward(dst, head, direction)
                    self.stall()
                    await self._flowing.wait()
                elif stall_budget is not None:
                    self._stall_budget[direction] = stall_budget - len(data)
                budget = self._budget[direction]
                cut = budget is not None and len(data) >= budget
                if budget is not None:
                    if cut:
                        data = data[:budget]
                        self._budget[direction] = None
                    else:
                        self._budget[direction] = budget - len(data)
                await self._forward(dst, data, direction)
                if cut:
                    self._cut(conn, self._rst)
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            # One side went away: take the other down too, as a real network path would.
            self._cut(conn, rst=False, fault=False)

    async def _forward(self, dst: trio.SocketStream, data: bytes, direction: Direction) -> None:
        if not data:
            return
        if direction == UP:
            self.bytes_up += len(data)
        else:
            self.bytes_down += len(data)
        await dst.send_all(data)


@contextlib.asynccontextmanager
async def open_fault_proxy(upstream: tuple[str, int] | str) -> AsyncIterator[FaultProxy]:
    """Run a :class:`FaultProxy` in front of ``upstream`` (``(host, port)`` or ``"host:port"``)
    for the duration of the block."""
    if isinstance(upstream, str):
        host, _, port = upstream.rpartition(":")
        upstream = (host, int(port))
    proxy = FaultProxy(upstream)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
