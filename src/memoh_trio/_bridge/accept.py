"""The server's accept loop: connections taken as descriptors allow (runs on the asyncio loop).

asyncio's own accept loop (``loop.create_server``) reports an ``accept()`` that failed for lack
of descriptors (EMFILE) to the loop's exception handler before it pauses; under trio-asyncio
that handler raises into the Trio task tree, and 300 idle connections to a server limited to
256 descriptors ended it with exit 1 ("Too many open files", in an ExceptionGroup). This loop
accepts by itself, keeps the count of connections under :func:`memoh_trio._admission.
connection_cap`, closes the oldest untrusted connections first when it needs room, and pauses
when nothing can be closed. The decisions are :class:`memoh_trio._admission.Admission`'s; this
module only carries them out.

Each accepted socket becomes an asyncio transport with ``loop.connect_accepted_socket`` (TLS
handshakes included, each in its own task so that a slow one holds nobody else up).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from .._admission import OUT_OF_RESOURCES, RETRY_DELAY, SKIPPABLE, Admission

log = logging.getLogger("memoh_trio.server")

#: Longest TLS handshake of a new connection (asyncio's default is 60 s).
TLS_HANDSHAKE_TIMEOUT = 10.0


class Acceptor:
    """Accepts connections on ``listener`` and hands each to ``protocol_factory(key)``.

    The protocols report back: :meth:`made` once their transport is up, :meth:`lost` when it is
    gone; the server reports :meth:`trust` for a connection whose call passed the token check.
    """

    def __init__(self, listener: socket.socket, admission: Admission,
                 protocol_factory: Callable[[int], asyncio.Protocol],
                 ssl_context: ssl.SSLContext | None) -> None:
        self._listener = listener
        self.admission = admission
        self._factory = protocol_factory
        self._ssl = ssl_context
        #: key -> how to close that connection now (cancel its handshake, or abort its transport).
        self._closers: dict[int, Callable[[], None]] = {}
        #: grpclib connection -> key (set in :meth:`made`), for :meth:`trust`.
        self._keys: dict[Any, int] = {}
        self._room = asyncio.Event()
        self._adopting: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ reports

    def made(self, key: int, transport: asyncio.BaseTransport, connection: Any) -> None:
        self._closers[key] = transport.abort  # type: ignore[attr-defined]
        self._keys[connection] = key

    def lost(self, key: int, connection: Any = None) -> None:
        self._closers.pop(key, None)
        if connection is not None:
            self._keys.pop(connection, None)
        self.admission.closed(key)
        self._room.set()

    def trust(self, connection: Any) -> None:
        key = self._keys.get(connection)
        if key is not None:
            self.admission.trust(key)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Accept until cancelled; on the way out, connections still in a handshake are closed
        (established ones are the server's to close)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self.admission.full():
                    await self._make_room(self.admission.room_needed())
                    continue
                try:
                    conn, _addr = self._listener.accept()
                except (BlockingIOError, InterruptedError):
                    await self._readable(loop)
                    continue
                except OSError as exc:
                    if exc.errno in OUT_OF_RESOURCES:
                        log.warning("accept() failed (%s) with %d connections open; closing "
                                    "the oldest unauthenticated one", exc, len(self.admission))
                        await self._make_room(1)
                        continue
                    if exc.errno in SKIPPABLE:
                        continue
                    raise
                conn.setblocking(False)
                key = self.admission.accepted()
                task = loop.create_task(self._adopt(conn, key))
                self._adopting.add(task)
                task.add_done_callback(self._adopting.discard)
                self._closers[key] = functools.partial(_cancel, task)
        finally:
            for task in list(self._adopting):
                task.cancel()

    async def _readable(self, loop: asyncio.AbstractEventLoop) -> None:
        fd = self._listener.fileno()
        ready = loop.create_future()
        loop.add_reader(fd, _set_once, ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)

    async def _make_room(self, count: int) -> None:
        """Close up to ``count`` untrusted connections, then wait until one is gone (or a short
        delay passed: a call may have closed a file meanwhile)."""
        self._room.clear()
        for key in self.admission.shed(count):
            closer = self._closers.get(key)
            if closer is not None:
                closer()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), RETRY_DELAY)

    async def _adopt(self, conn: socket.socket, key: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: self._factory(key), conn, ssl=self._ssl,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if self._ssl is not None else None)
        except BaseException as exc:
            # Handshake failed, timed out or was cancelled (shed, or the server stops): asyncio
            # closed its transport; the socket is closed here in case none was made.
            conn.close()
            self.lost(key)
            if not isinstance(exc, Exception | asyncio.CancelledError):
                raise
            log.debug("connection %d not established: %r", key, exc)


def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
