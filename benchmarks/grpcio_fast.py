"""grpcio as fast as it goes: the same files, the same WriteRaw RPC, the best C-core client we have.

What makes it fast (each measured on this harness; see the run.py table):

- ``grpc.aio``: one event loop drives many concurrent calls with no thread per call (the sync API
  spawns a request-consuming thread for every client-streaming call);
- ``--concurrency`` calls in flight, spread over ``--channels`` HTTP/2 connections (a local
  subchannel pool per channel, so they really are separate TCP connections);
- large messages (``--chunk``, default 2 MiB, under grpcio's 4 MiB default receive limit); a file
  that fits in one chunk goes out as one message carrying path and data.

The source is renamed to ``<src>.migrated`` at the end, like the other migrating contenders.

    python -m benchmarks.grpcio_fast --target 127.0.0.1:PORT --src DIR [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
from collections.abc import Iterator
from typing import Any

import grpc

from benchmarks._measure import Meter
from benchmarks.grpcio_peer import load_stubs

DEFAULT_CHUNK = 2 * 1024 * 1024
DEFAULT_CONCURRENCY = 16
DEFAULT_CHANNELS = 2


def _walk(src: str) -> Iterator[tuple[str, str]]:
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            yield path, os.path.relpath(path, src).replace(os.sep, "/")


async def _copy(stub: Any, pb2: Any, path: str, rel: str, chunk: int) -> int:
    # Blocking reads on the loop, on purpose: page-cache reads of at most one chunk are cheaper
    # than a thread hop, and the C core does the network I/O off this thread anyway.
    with open(path, "rb", buffering=0) as f:  # noqa: ASYNC230
        data = f.read(chunk)
        rest = f.read(chunk) if len(data) == chunk else b""
        if not rest:  # the whole file in one message: path and data together
            resp = await stub.WriteRaw(iter([pb2.WriteRawChunk(path=rel, data=data)]))
            return int(resp.bytes_written)
        call = stub.WriteRaw()
        await call.write(pb2.WriteRawChunk(path=rel, data=data))
        while rest:
            await call.write(pb2.WriteRawChunk(data=rest))
            rest = f.read(chunk)
        await call.done_writing()
        resp = await call
        return int(resp.bytes_written)


async def migrate(
    target: str, src: str, *, concurrency: int, channels: int, chunk: int
) -> tuple[int, int]:
    pb2, pb2_grpc = load_stubs()
    options = [
        ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per channel
        ("grpc.max_send_message_length", -1),
    ]
    chans = [grpc.aio.insecure_channel(target, options=options) for _ in range(channels)]
    stubs = [pb2_grpc.ContainerServiceStub(c) for c in chans]
    files = nbytes = 0
    work = _walk(src)  # shared: each worker pulls the next file (no list held up front)
    try:

        async def worker(stub: Any) -> None:
            nonlocal files, nbytes
            for path, rel in work:
                nbytes += await _copy(stub, pb2, path, rel, chunk)
                files += 1

        async with asyncio.TaskGroup() as tg:
            for _, stub in zip(range(concurrency), itertools.cycle(stubs), strict=False):
                tg.create_task(worker(stub))
    finally:
        for c in chans:
            await c.close()
    return files, nbytes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    ap.add_argument("--channels", type=int, default=DEFAULT_CHANNELS)
    ap.add_argument("--chunk", type=int, default=DEFAULT_CHUNK)
    ap.add_argument("--no-rename", dest="rename", action="store_false")
    args = ap.parse_args(argv)
    load_stubs()  # outside the timed region, like every contender's imports
    src = os.path.abspath(args.src)
    with Meter() as meter:
        files, nbytes = asyncio.run(
            migrate(args.target, src, concurrency=args.concurrency, channels=args.channels,
                    chunk=args.chunk)
        )
        if args.rename:
            os.rename(src, src + ".migrated")
    meter.emit(files=files, bytes=nbytes, renamed=args.rename)
    return 0


if __name__ == "__main__":
    sys.exit(main())
