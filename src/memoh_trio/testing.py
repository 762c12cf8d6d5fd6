"""Test helpers for code that embeds memoh-trio: an in-process server and leftover checks.

Like grpclib's ``testing.ChannelFor``, :func:`running_server` gives a test a real
ContainerService without a separate process: a :func:`memoh_trio.serve` task on 127.0.0.1 (a
free port), authenticated with a fresh random token unless told otherwise, and a ``connect()``
that carries that token::

    async def test_upload(tmp_path):
        async with memoh_trio.testing.running_server(tmp_path) as server:
            async with server.connect() as client:
                await client.write_file("a.txt", b"hi")
        assert (tmp_path / "a.txt").read_bytes() == b"hi"
        assert memoh_trio.testing.temp_entries(tmp_path) == []

The server runs in the caller's Trio run (a nursery of its own); leaving the block stops it the
way cancellation always does (in-flight uploads discard their temporary files).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import trio

from ._client import Client, connect
from ._paths import TEMP_PREFIXES as _TEMP_PREFIXES
from ._server import ServerAddress, serve

__all__ = ["TEMP_PREFIXES", "RunningServer", "running_server", "temp_entries"]

#: Name prefixes of the temporary entries memoh-trio creates at a destination: the server's
#: upload file, the migrator's part file, the tar-batch staging directory. None of them may be
#: left behind once a migration (or a failed one) is over.
TEMP_PREFIXES: tuple[str, ...] = _TEMP_PREFIXES


def temp_entries(top: str | os.PathLike[str]) -> list[str]:
    """Paths of every temporary entry (see :data:`TEMP_PREFIXES`) under ``top``, sorted."""
    return sorted(os.path.join(d, n) for d, ds, fs in os.walk(top) for n in ds + fs
                  if n.startswith(TEMP_PREFIXES))


@dataclasses.dataclass(frozen=True)
class RunningServer:
    """A server started by :func:`running_server`.

    Attributes:
        address: where it listens (``str(address)`` is the ``host:port`` target).
        token: the bearer token it requires (``None``: unauthenticated, see ``running_server``).
        root: the directory it serves.
    """

    address: ServerAddress
    token: str | None
    root: str

    @property
    def target(self) -> str:
        return str(self.address)

    def connect(self, **kwargs: Any) -> contextlib.AbstractAsyncContextManager[Client]:
        """:func:`memoh_trio.connect` to this server with its token (``kwargs`` go through)."""
        kwargs.setdefault("token", self.token)
        return connect(self.target, **kwargs)


@contextlib.asynccontextmanager
async def running_server(root: str | os.PathLike[str], *, token: str | None = None,
                         allow_unauthenticated: bool = False,
                         **serve_kwargs: Any) -> AsyncIterator[RunningServer]:
    """Serve ``root`` in-process on 127.0.0.1 (free port) for the duration of the block.

    Args:
        root: the directory served.
        token: the token to require; by default a fresh random one (``server.token``).
        allow_unauthenticated: serve without a token (to test that mode explicitly).
        serve_kwargs: passed to :func:`memoh_trio.serve` (``hooks``, ``tls``, ``allow_exec``...).

    Yields:
        The :class:`RunningServer`.
    """
    if token is None and not allow_unauthenticated:
        token = secrets.token_hex(16)
    async with trio.open_nursery() as nursery:
        address: ServerAddress = await nursery.start(partial(
            serve, root, token=token, allow_unauthenticated=allow_unauthenticated,
            **serve_kwargs))
        try:
            yield RunningServer(address, token, os.fspath(root))
        finally:
            nursery.cancel_scope.cancel()
