"""The only place where asyncio, trio-asyncio and grpclib meet the rest of memoh-trio.

grpclib is asyncio-only; memoh-trio is Trio. This package runs grpclib on a trio-asyncio loop
and exposes plain Trio functions to the rest of the code. Rules kept here:

* ``trio_asyncio`` is imported before ``grpclib`` (it must patch asyncio's loop policy first);
* the bridge is crossed once per RPC, never once per chunk, on the hot paths (WriteRaw/ReadRaw);
* grpclib's exceptions are mapped to :mod:`memoh_trio._errors` at this edge;
* channels and servers are always closed, also on cancellation.

Modules:

* ``client``: what :mod:`memoh_trio._client` uses, re-exported from the client modules below;
* ``channel``: ``BridgeChannel`` (grpclib channel and protocol, unary calls, the streams below);
* ``upload``: one WriteRaw stream; ``execute``: one Exec stream (as Memoh's server speaks it);
  ``download``: one ReadRaw stream into a pipe;
* ``reader``: the WriteRaw source reader; ``pipe``: the Trio/asyncio queue and its pump;
* ``errors``: errors mapped at the edge;
* ``server``: the grpclib server hosting the ContainerService (protocol, handlers, lifecycle);
* ``inbound``: request messages as the server reads them (size limit before buffering);
* ``server_streams``: the server's WriteRaw and Exec calls;
* ``codec``: the grpclib codec both sides share (bulk messages encoded by hand);
* ``h2patch``: two measured h2/hyperframe fixes, installed when a channel or server opens;
* ``threads``: worker threads whose cancellation works from asyncio;
* ``compat``: every private name of grpclib, h2, hyperframe and asyncio the bridge relies on;
* ``bp2version``: betterproto2's version read without ``importlib.metadata``: start-up time of
  the console script only (:func:`memoh_trio._cli.main.main` installs it before any import).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import trio_asyncio  # first: the package init runs before client.py/server.py import grpclib


@contextlib.asynccontextmanager
async def asyncio_loop() -> AsyncIterator[None]:
    """Make sure a trio-asyncio loop runs for the enclosed block.

    Reuses the loop of an enclosing block (the loop is looked up through a context variable, so a
    nested client inside a server's task tree shares it); otherwise opens one and closes it on exit.
    """
    if trio_asyncio.current_loop.get() is not None:
        yield
        return
    async with trio_asyncio.open_loop():
        yield
