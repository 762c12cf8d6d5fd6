"""Server processes for the harness; each prints ``listening on HOST:PORT`` and runs until SIGTERM.

    python -m benchmarks.servers grpcio --root DIR      # benchmarks.grpcio_peer's servicer
    python -m benchmarks.servers memoh --root DIR [--profile OUT.prof]

``run.py`` starts memoh-trio's server with its own CLI (``python -m memoh_trio serve``); the
``memoh`` launcher here is the fallback while the CLI cannot, and the way to run the server under
cProfile.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import os
import signal
import sys
import threading
from pathlib import Path

import trio


async def _serve_memoh(root: Path) -> None:
    from memoh_trio import serve

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            token = os.environ.get("MEMOH_TRIO_TOKEN")
            addr = await nursery.start(functools.partial(
                serve, root, "127.0.0.1", 0, token=token, allow_unauthenticated=token is None))
            print(f"listening on {addr}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def memoh(root: Path, profile: str | None) -> None:
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    try:
        trio.run(_serve_memoh, root)
    finally:
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)


def grpcio(root: Path) -> None:
    from benchmarks.grpcio_peer import start_grpcio_server

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server, port = start_grpcio_server(root, port=0)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop(0).wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("kind", choices=["memoh", "grpcio"])
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--profile")
    args = ap.parse_args(argv)
    if args.kind == "memoh":
        memoh(args.root, args.profile)
    else:
        grpcio(args.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
