"""The asyncio side of a ReadRaw: the server's chunks into a :class:`~.pipe.Pipe` (the Trio side
``get()``s them; :meth:`memoh_trio._bridge.channel.BridgeChannel.read_raw` runs this as one
asyncio task, one crossing)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from .._proto import mcpcontainer as pb
from .pipe import Pipe


async def pump(open_stream: Callable[[], AbstractAsyncContextManager[Any]], path: str,
               pipe: Pipe[bytes]) -> None:
    """Ask for ``path`` and put each chunk into ``pipe``; cancel the call if the reader left."""
    async with open_stream() as stream:
        await stream.send_message(pb.ReadRawRequest(path=path), end=True)
        while (msg := await stream.recv_message()) is not None:
            if msg.data and not await pipe.aput(bytes(msg.data)):
                await stream.cancel()
                return
