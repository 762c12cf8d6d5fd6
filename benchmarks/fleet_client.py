"""The in-process fleet contender: ``memoh_trio.migrate_all`` with its defaults, nothing else.

    python -m benchmarks.fleet_client --data-root DIR --targets TARGETS.json
    python -m benchmarks.fleet_client --data-root DIR --phases BOT_ID --target HOST:PORT
    python -m benchmarks.fleet_client --data-root DIR --targets TARGETS.json --agent

Prints one ``RESULT {json}`` line (``benchmarks/_measure.py``): the timed region (connect,
copy, renames; imports and interpreter start excluded), its CPU, peak RSS, bots and how many
were renamed. ``--phases BOT_ID``: ``migrate_bot`` of that bot alone with every RPC timed
(``benchmarks.phases.Timed``); ``calls`` in the result sums them per kind. ``--agent``: the
prototype of issue 25, every bot through the container agent (:func:`agent_fleet`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
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


async def agent_fleet(data_root: str, targets: dict[str, str]) -> dict[str, Any]:
    """The prototype: every bot copied by the container agent (``benchmarks.agent_count
    .push_tree``: one Exec per bot), then renamed; as many bots at once as ``migrate_all``.
    Not a migrator (no resume, no verification beyond the agent's size check)."""
    import memoh_trio
    from benchmarks.agent_count import push_tree
    from memoh_trio._agent.session import open_agent
    from memoh_trio._defaults import DEFAULT_BOT_CONCURRENCY

    limit = trio.CapacityLimiter(DEFAULT_BOT_CONCURRENCY)
    failed: dict[str, list[str]] = {}
    renamed = 0

    async def one(bot: str, target: str) -> None:
        nonlocal renamed
        src = trio.Path(data_root) / "bots" / bot
        async with limit, memoh_trio.connect(target) as client, \
                open_agent(client, "") as agent:
            failed[bot] = await push_tree(agent, Path(src))
        if not failed[bot]:
            await src.rename(src.with_name(bot + ".migrated"))
            renamed += 1

    async with trio.open_nursery() as nursery:
        for bot, target in sorted(targets.items()):
            nursery.start_soon(one, bot, target)
    return {"bots": len(targets), "renamed": renamed,
            "failed": sum(len(f) for f in failed.values()) + len(targets) - renamed,
            "errors": [f"{b}: {f[:3]}" for b, f in failed.items() if f][:3]}


async def phases(data_root: str, bot: str, target: str) -> dict[str, Any]:
    import memoh_trio
    from benchmarks.phases import Timed

    log: list[tuple[str, float, float, int]] = []
    t0 = time.monotonic()
    async with memoh_trio.connect(target) as client:
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
    ap.add_argument("--agent", action="store_true",
                    help="the prototype: every bot through the container agent")
    args = ap.parse_args(argv)
    import memoh_trio

    # Imports outside the timed region, like every contender (the package loads lazily).
    _ = memoh_trio.connect, memoh_trio.migrate_all, memoh_trio.migrate_bot
    if args.agent:
        import benchmarks.agent_count
        import memoh_trio._agent.session

        _ = benchmarks.agent_count.push_tree, memoh_trio._agent.session.open_agent

    data_root = os.path.abspath(args.data_root)
    with Meter() as meter:
        if args.phases:
            result = trio.run(phases, data_root, args.phases, args.target)
        else:
            with open(args.targets) as f:
                targets = json.load(f)
            result = trio.run(agent_fleet if args.agent else fleet, data_root, targets)
    meter.emit(**result)
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
