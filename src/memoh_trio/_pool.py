"""A per-bot pool of :class:`~memoh_trio._client.Client` connections.

Like Memoh's ``mcpclient.Pool``: ``await pool.get(bot_id)`` dials the bot's container lazily and
reuses the connection afterwards. A connection is evicted when the bot's address changes
(:meth:`Pool.set_address`, or the address function returning something new), when a call on it
failed with Unavailable (the connection broke), or on :meth:`Pool.evict`. An evicted connection
still serving calls is closed when its last call ends; :meth:`Pool.aclose` closes everything, so
no channel outlives the pool.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import trio

from . import _errors
from ._bridge import asyncio_loop
from ._client import Client, on_unavailable, open_client, parse_target, retire


class Pool:
    """Connections to many bots' containers, one per bot.

    Args:
        addresses: bot id → ``"host:port"``, as a mapping (read at each :meth:`get`, so it may be
            updated in place) or a function.
        **connect_kwargs: passed to each connection (``tls``, ``token``, ``timeout``,
            ``chunk_size``, ``connect_timeout``), as for :func:`memoh_trio.connect`.

    Use as ``async with Pool(...) as pool:``; the block owns the asyncio loop and every channel.
    """

    def __init__(
        self, addresses: Mapping[str, str] | Callable[[str], str], **connect_kwargs: Any
    ) -> None:
        self._addresses = addresses
        self._connect_kwargs = connect_kwargs
        self._overrides: dict[str, str] = {}
        self._clients: dict[str, Client] = {}
        self._all: set[Client] = set()  # every open client, evicted ones included
        self._dialing: dict[str, trio.Event] = {}
        self._stack: contextlib.AsyncExitStack | None = None
        self._closed = False

    async def __aenter__(self) -> Pool:
        if self._stack is not None or self._closed:
            raise RuntimeError("a Pool can be entered only once")
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(asyncio_loop())
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The caller's exception is not passed into the loop's nursery (it would come out wrapped
        # in an ExceptionGroup); it propagates unchanged once everything is closed.
        await self.aclose()

    def address_of(self, bot_id: str) -> str:
        """The address :meth:`get` would dial for ``bot_id`` (ConfigError if unknown)."""
        if bot_id in self._overrides:
            return self._overrides[bot_id]
        if callable(self._addresses):
            address = self._addresses(bot_id)
        else:
            try:
                address = self._addresses[bot_id]
            except KeyError:
                raise _errors.ConfigError(f"no address known for bot {bot_id!r}") from None
        parse_target(address)
        return address

    async def get(self, bot_id: str) -> Client:
        """The bot's client, dialling it now if needed.

        Raises:
            Unavailable: the container cannot be reached (nothing is cached then).
            ConfigError: no (valid) address for the bot.
        """
        while True:
            if self._closed or self._stack is None:
                raise RuntimeError("the Pool is not open (use `async with Pool(...)`)")
            address = self.address_of(bot_id)
            client = self._clients.get(bot_id)
            if client is not None:
                if client.target == address and not client.closed:
                    return client
                self._evict_now(bot_id, client)
            dialing = self._dialing.get(bot_id)
            if dialing is not None:  # someone else dials this bot: wait, then look again
                await dialing.wait()
                continue
            done = trio.Event()
            self._dialing[bot_id] = done
            try:
                client = await open_client(address, **self._connect_kwargs)
            finally:
                del self._dialing[bot_id]
                done.set()
            if self._closed:
                await client.aclose()
                raise RuntimeError("the Pool was closed while dialling")
            on_unavailable(client, partial_evict(self, bot_id))
            self._all.add(client)
            self._clients[bot_id] = client
            return client

    def set_address(self, bot_id: str, address: str) -> None:
        """Record the bot's (new) address; a connection to another address is evicted."""
        parse_target(address)
        self._overrides[bot_id] = address
        client = self._clients.get(bot_id)
        if client is not None and client.target != address:
            self._evict_now(bot_id, client)

    async def evict(self, bot_id: str) -> None:
        """Drop the bot's connection (closed now, or when its running calls end)."""
        client = self._clients.get(bot_id)
        if client is not None:
            self._evict_now(bot_id, client)
        await trio.lowlevel.checkpoint()

    def _evict_now(self, bot_id: str, client: Client) -> None:
        if self._clients.get(bot_id) is client:
            del self._clients[bot_id]
        retire(client)
        self._forget_closed()

    def _forget_closed(self) -> None:
        self._all = {c for c in self._all if not c.closed}

    def __contains__(self, bot_id: object) -> bool:
        return bot_id in self._clients

    def __len__(self) -> int:
        return len(self._clients)

    @property
    def open_channels(self) -> int:
        """Channels not closed yet (current ones plus evicted ones still finishing calls)."""
        self._forget_closed()
        return len(self._all)

    async def aclose(self) -> None:
        """Close every connection and the loop (idempotent)."""
        if self._closed:
            return
        self._closed = True
        clients, self._all = self._all, set()
        self._clients.clear()
        stack, self._stack = self._stack, None
        with trio.CancelScope(shield=True):
            for client in clients:
                await client.aclose()
        if stack is not None:  # outside the shield: it exits the loop's own cancel scope
            await stack.aclose()


def partial_evict(pool: Pool, bot_id: str) -> Callable[[Client], None]:
    """The hook a pooled client calls when one of its calls failed with Unavailable."""

    def on_unavailable(client: Client) -> None:
        pool._evict_now(bot_id, client)

    return on_unavailable


__all__ = ["Pool"]
