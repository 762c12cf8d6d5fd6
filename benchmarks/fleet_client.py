"""The in-process fleet contender: ``memoh_trio.migrate_all`` with its defaults, nothing else.

    python -m benchmarks.fleet_client --data-root DIR --targets TARGETS.json
    python -m benchmarks.fleet_client --data-root DIR --phases BOT_ID --target HOST:PORT

Prints one ``RESULT {json}`` line (``benchmarks/_measure.py``): the timed region (connect,
copy, renames; imports and interpreter start excluded), its CPU, peak RSS, bots and how many
were renamed. ``--phases BOT_ID``: ``migrate_bot`` of that bot alone with every RPC and every
request to the container agent timed (``benchmarks.phases.Timed``,
``agent_requests_timed``); ``calls`` in the result sums them per kind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import trio

from benchmarks._measure import Meter


async def fleet(data_root: str, targets: dict[str, str]) -> dict[str, Any]:
    import memoh_trio

    reports = await memoh_trio.migrate_all(data_root, targets)
    return {
        "bots": len(reports),
        "renamed": sum(r.renamed_to is not None for r in reports),
        "files": sum(r.files for r in reports),
        "bytes": sum(r.bytes for r in reports),
        "failed": sum(len(r.failures) for r in reports) + sum(not r.ok for r in reports),
        "errors": [r.error for r in reports if r.error][:3],
    }


async def phases(data_root: str, bot: str, target: str) -> dict[str, Any]:
    import memoh_trio
    from benchmarks.phases import Timed, agent_requests_timed

    log: list[tuple[str, float, float, int]] = []
    t0 = time.monotonic()
    async with memoh_trio.connect(target) as client:
        with agent_requests_timed(t0, log):
            report = await memoh_trio.migrate_bot(bot, data_root, Timed(client, t0, log))
    calls: dict[str, dict[str, float]] = {}
    for what, start, end, _n in log:
        row = calls.setdefault(what, {"count": 0, "sum": 0.0, "first": start, "last": end})
        row["count"] += 1
        row["sum"] += end - start
        row["first"] = min(row["first"], start)
        row["last"] = max(row["last"], end)
    return {"bots": 1, "renamed": int(report.renamed_to is not None), "files": report.files,
            "bytes": report.bytes, "failed": len(report.failures) + (not report.ok),
            "errors": [report.error] if report.error else [], "calls": calls}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--targets")
    ap.add_argument("--phases", metavar="BOT_ID")
    ap.add_argument("--target")
    args = ap.parse_args(argv)
    import memoh_trio

    # Imports outside the timed region, like every contender (the package loads lazily).
    _ = memoh_trio.connect, memoh_trio.migrate_all, memoh_trio.migrate_bot

    data_root = os.path.abspath(args.data_root)
    with Meter() as meter:
        if args.phases:
            result = trio.run(phases, data_root, args.phases, args.target)
        else:
            with open(args.targets) as f:
                targets = json.load(f)
            result = trio.run(fleet, data_root, targets)
    meter.emit(**result)
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
