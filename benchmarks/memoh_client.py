"""The memoh-trio contender: ``memoh_trio.migrate`` through ``memoh_trio.connect``, nothing else.

    python -m benchmarks.memoh_client --target 127.0.0.1:PORT --src DIR [--concurrency N]
        [--profile OUT.prof]

Without ``--concurrency`` the migrator's own default is used (the "memoh-trio defaults" row).
``--profile`` runs the timed region under cProfile and writes the stats to OUT.prof.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import sys
from typing import Any

import trio

from benchmarks._measure import Meter


def _api() -> tuple[Any, Any]:
    """``(connect, migrate)`` from the public API."""
    import memoh_trio

    return memoh_trio.connect, memoh_trio.migrate


def _count(value: Any) -> int:
    if isinstance(value, int):
        return value
    try:
        return len(value)
    except TypeError:
        return 0


async def run(target: str, src: str, options: dict[str, Any]) -> dict[str, Any]:
    connect, migrate = _api()
    # memoh-trio's server requires a token; run.py gives it to both ends (others ignore it).
    async with connect(target, token=os.environ.get("MEMOH_TRIO_TOKEN")) as client:
        report = await migrate(src, client, **options)
    failures = getattr(report, "failures", ())
    return {
        "files": _count(getattr(report, "files", getattr(report, "files_copied", 0))),
        "bytes": _count(getattr(report, "bytes", getattr(report, "bytes_copied", 0))),
        "failed": _count(failures),
        "failure_sample": [str(f) for f in list(failures)[:3]],
        "error": getattr(report, "error", None),
        "renamed": getattr(report, "renamed_to", None) is not None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--concurrency", type=int)
    ap.add_argument("--chunk-size", type=int)
    ap.add_argument("--profile")
    args = ap.parse_args(argv)
    options: dict[str, Any] = {}
    if args.concurrency is not None:
        options["concurrency"] = args.concurrency
    if args.chunk_size is not None:
        options["chunk_size"] = args.chunk_size
    _api()  # imports outside the timed region, like every contender
    src = os.path.abspath(args.src)
    profiler = cProfile.Profile() if args.profile else None
    with Meter() as meter:
        if profiler is not None:
            profiler.enable()
        try:
            result = trio.run(run, args.target, src, options)
        finally:
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
    meter.emit(**result)
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
