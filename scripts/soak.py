"""Soak run (issue 4): back-to-back migrations of a mixed tree with random faults.

Each round builds a fresh mixed tree, starts a server (with fault hooks) behind the fault proxy,
injects one random fault (proxy delay / stall / cut up / cut down, server Nth-write failure,
ENOSPC, stop-reading, or none), migrates, then removes the fault and reruns until the source is
renamed. After every round it checks that every source file arrived identical, that no temporary
file remains, and that the source was renamed only once everything was there.

Usage::

    .venv/bin/python scripts/soak.py [--rounds 20] [--seed N] [--time-limit 600]

Prints one line per round and a summary; exits 1 if any file was lost (or a round broke a
promise), 0 otherwise.
"""

# Test set-up and checks touch the local file system directly, on purpose.
# ruff: noqa: ASYNC240

from __future__ import annotations

import argparse
import errno
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from faultproxy import DOWN, UP, open_fault_proxy

from memoh_trio import MemohError, ServerHooks, connect, migrate
from memoh_trio.testing import TEMP_PREFIXES, running_server, temp_entries

FAULTS = ["none", "delay", "stall", "cut-up", "cut-down", "nth-write", "enospc", "stop-reading"]
STALL_TIMEOUT = 1.0
RUN_LIMIT = 60.0  # one migration attempt, seconds


@dataclass
class Totals:
    rounds: int = 0
    files_copied: int = 0
    bytes_copied: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    failed_attempts: int = 0
    files_lost: int = 0
    broken_promises: list[str] = field(default_factory=list)


def build_tree(src: Path, rng: random.Random) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for i in range(rng.randint(20, 60)):
        depth = rng.randint(0, 3)
        parts = [f"d{rng.randint(0, 4)}" for _ in range(depth)] + [f"f{i}.bin"]
        size = rng.choice([0, 1, 100, 4096, 70_000, 300_000, 1_200_000])
        files["/".join(parts)] = rng.randbytes(size)
    files["big.bin"] = rng.randbytes(rng.choice([2, 3]) * 1024 * 1024)
    for rel, data in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (src / "empty-dir").mkdir(exist_ok=True)
    return files


def tree_files(top: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for dirpath, _dirs, names in os.walk(top):
        for name in names:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(top))] = p.read_bytes()
    return out


async def one_round(n: int, rng: random.Random, work: Path, totals: Totals) -> None:
    base = work / f"round{n}"
    src = base / "bot"
    root = base / "root"
    src.mkdir(parents=True)
    root.mkdir()
    files = build_tree(src, rng)
    fault = rng.choice(FAULTS)
    totals.faults[fault] = totals.faults.get(fault, 0) + 1
    hooks = ServerHooks()
    outcome = ""
    async with running_server(root, hooks=hooks) as server:
        addr = server.address
        async with open_fault_proxy((addr.host, addr.port)) as proxy:
            total = sum(len(d) for d in files.values())
            if fault == "delay":
                proxy.delay = rng.choice([0.001, 0.005])
            elif fault == "stall":
                proxy.stall_after(UP, rng.randint(1, max(2, total // 2)))
            elif fault == "cut-up":
                proxy.cut_after(UP, rng.randint(1, max(2, total // 2)))
            elif fault == "cut-down":
                proxy.cut_after(DOWN, rng.randint(1, 3000))
            elif fault == "nth-write":
                hooks.fail_write_nth = rng.randint(1, 40)
                hooks.fail_errno = errno.EIO
            elif fault == "enospc":
                hooks.fail_write_nth = rng.randint(1, 40)
                hooks.fail_errno = errno.ENOSPC
            elif fault == "stop-reading":
                hooks.stall_after_bytes = rng.choice([50_000, 500_000])
            attempts = 0
            while True:
                attempts += 1
                renamed_before = Path(str(src) + ".migrated").exists()
                try:
                    with trio.fail_after(RUN_LIMIT):
                        async with connect(proxy.target, token=server.token,
                                           connect_timeout=5, timeout=10) as client:
                            report = await migrate(
                                src, client, concurrency=rng.choice([1, 4, 8]),
                                chunk_size=rng.choice([16 * 1024, 64 * 1024, 1024 * 1024]),
                                stall_timeout=STALL_TIMEOUT,
                                verify=rng.choice(["size", "sha256"]))
                    ok = report.status == "migrated"
                    if ok:
                        totals.files_copied += report.files
                        totals.bytes_copied += report.bytes
                    outcome += "ok " if ok else f"incomplete({len(report.failures)}) "
                except MemohError as exc:
                    ok = False
                    outcome += f"{type(exc).__name__} "
                except trio.TooSlowError:
                    ok = False
                    outcome += "HUNG "
                    totals.broken_promises.append(f"round {n}: a run hung ({fault})")
                renamed = Path(str(src) + ".migrated").exists()
                if not ok:
                    totals.failed_attempts += 1
                    if renamed and not renamed_before:
                        totals.broken_promises.append(f"round {n}: renamed after a failure")
                    # Nothing partial at a final path, ever.
                    for rel, data in tree_files(root).items():
                        if any(part.startswith(TEMP_PREFIXES) for part in rel.split("/")):
                            continue
                        if files.get(rel) != data:
                            totals.broken_promises.append(
                                f"round {n}: partial/wrong file at final path {rel}")
                    # Remove the fault; a dead connection dies for good.
                    proxy.cut()
                    proxy.clear()
                    hooks.fail_write_nth = None
                    hooks.stall_after_bytes = None
                if ok or attempts >= 3:
                    break
    migrated = Path(str(src) + ".migrated")
    if not migrated.exists():
        totals.broken_promises.append(f"round {n}: not migrated after the fault was removed")
        arrived = tree_files(root)
        lost = sum(1 for rel, data in files.items() if arrived.get(rel) != data)
    else:
        arrived = tree_files(root)
        lost = sum(1 for rel, data in files.items() if arrived.get(rel) != data)
        if tree_files(migrated) != files:
            totals.broken_promises.append(f"round {n}: the source changed")
    totals.files_lost += lost
    if temp_entries(root):
        totals.broken_promises.append(f"round {n}: temporary files left: {temp_entries(root)}")
    totals.rounds += 1
    print(f"round {n:2d}: fault={fault:12s} files={len(files):3d} attempts={attempts} "
          f"lost={lost} [{outcome.strip()}]", flush=True)
    shutil.rmtree(base)


async def soak(rounds: int, seed: int, time_limit: float) -> Totals:
    rng = random.Random(seed)
    totals = Totals()
    with tempfile.TemporaryDirectory(prefix="memoh-soak-") as tmp:
        with trio.move_on_after(time_limit) as scope:
            for n in range(rounds):
                await one_round(n, rng, Path(tmp), totals)
        if scope.cancelled_caught:
            totals.broken_promises.append(f"time limit of {time_limit:g} s reached")
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--time-limit", type=float, default=600.0)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"soak: {args.rounds} rounds, seed {seed}", flush=True)
    start = time.monotonic()
    totals = trio.run(soak, args.rounds, seed, args.time_limit)
    print(f"\nrounds: {totals.rounds}  files copied: {totals.files_copied}  "
          f"bytes copied: {totals.bytes_copied}  failed attempts: {totals.failed_attempts}")
    print("faults injected: " + ", ".join(f"{k}={v}" for k, v in sorted(totals.faults.items())))
    print(f"files lost: {totals.files_lost}")
    print(f"seconds: {time.monotonic() - start:.1f}")
    for problem in totals.broken_promises:
        print(f"PROBLEM: {problem}")
    return 1 if totals.files_lost or totals.broken_promises else 0


if __name__ == "__main__":
    sys.exit(main())
