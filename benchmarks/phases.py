"""Where a migration into Memoh's Go server spends its time, call by call (in-process).

    python -m benchmarks.phases --scenario a [--scenario c] [--rounds 3] [--go-seed]

For each round: a fresh Memoh Go server on a fresh root, a fresh copy of the scenario's tree
(from the harness cache), an untimed ``sync``, then ``memoh_trio.migrate`` with every client RPC
wrapped to record its start and end. Prints, per round, the total, each Exec (kind, start, end,
stdin bytes) and the sum per kind, and the wall time of Memoh's Go migrator on the same tree
(``--go-seed``), interleaved. Figures are for notes and commit messages, not tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from benchmarks import scenarios
from benchmarks._measure import CONTAINER_PATH
from benchmarks.run import Trash

GO_SERVER = Path("/tmp/memoh-go/memoh-go-server")
GO_SEED = Path("/tmp/memoh-go/memoh-go-seed")
#: The server's environment: a container's PATH (see ``benchmarks.run.CONTAINER_PATH``).
SERVER_ENV = {**os.environ, "PATH": CONTAINER_PATH}


def _kind(command: str) -> str:
    if "PROTOCOL_VERSION" in command:  # the container agent's program
        return "agent"
    if "tar " in command and "-x" in command:
        return "tar-extract"
    if "os.rename(s,f)" in command:
        return "move-py"
    if "python3 -S -c" in command and "os.utime" in command:
        return "meta-py"
    if "python3 -S -c" in command and "symlink" in command:
        return "links-py"
    if "for c in" in command:
        return "probe"
    if "sync" in command:
        return "sync"
    if "sh -s" in command:
        return "sh-stdin"
    return command.splitlines()[-1][:30]


#: The agent session's requests timed by :func:`agent_requests_timed` (a benchmark's view inside
#: the one Exec the agent lives in; private names of memoh-trio's own ``_agent.session``).
AGENT_TIMED = ("hello", "call", "write", "bye")


@contextmanager
def agent_requests_timed(t0: float, log: list[tuple[str, float, float, int]]) -> Iterator[None]:
    """While it lasts, every request to the container agent is logged as ``agent:OP`` (its
    start and reply, relative to ``t0``; bytes -1), beside the RPCs :class:`Timed` logs: the
    ``exec:agent`` row is then split into what the agent did."""
    from memoh_trio._agent.session import Agent

    saved = {name: getattr(Agent, name) for name in AGENT_TIMED}

    def timed(name: str) -> Any:
        original = saved[name]

        async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            what = "agent:" + (str(args[0]) if name == "call" and args else name)
            start = time.monotonic() - t0
            try:
                return await original(self, *args, **kwargs)
            finally:
                log.append((what, start, time.monotonic() - t0, -1))

        return method

    for name in AGENT_TIMED:
        setattr(Agent, name, timed(name))
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(Agent, name, original)


class Timed:
    def __init__(self, client: Any, t0: float, log: list[tuple[str, float, float, int]]) -> None:
        self._c, self._t0, self._log = client, t0, log

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._c, name)
        if not callable(attr) or name == "write_raw":
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            start = time.monotonic() - self._t0
            try:
                return await attr(*args, **kwargs)
            finally:
                what = name if name != "exec" else "exec:" + _kind(args[0])
                stdin = kwargs.get("stdin", b"")
                self._log.append((what, start, time.monotonic() - self._t0,
                                  len(stdin) if isinstance(stdin, bytes) else -1))

        return call


async def _one(src: Path, root: Path) -> tuple[float, list[tuple[str, float, float, int]]]:
    import memoh_trio

    proc = await trio.lowlevel.open_process([str(GO_SERVER), "--root", str(root), "--listen",
                                             "127.0.0.1:0"], stdout=subprocess.PIPE,
                                            env=SERVER_ENV)
    assert proc.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        line += await proc.stdout.receive_some(100)
    target = line.decode().split()[-1]
    log: list[tuple[str, float, float, int]] = []
    try:
        t0 = time.monotonic()
        async with memoh_trio.connect(target) as client:
            with agent_requests_timed(t0, log):
                report = await memoh_trio.migrate(str(src), Timed(client, t0, log))  # type: ignore[arg-type]
        total = time.monotonic() - t0
        assert report.ok and report.renamed_to, (report.status, report.failures[:3], report.error)
    finally:
        proc.terminate()
        await proc.wait()
    return total, log


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", action="append", default=[])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--go-seed", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="only the totals")
    args = ap.parse_args()
    cache = Path(os.environ.get("MEMOH_BENCH_CACHE",
                                Path.home() / ".cache" / "memoh-trio-bench"))
    trash = Trash(cache)
    try:
        for key in args.scenario or ["a"]:
            _scenario(cache, key, args, trash)
    finally:
        trash.empty()


def _scenario(cache: Path, key: str, args: argparse.Namespace, trash: Trash) -> None:
    tree, _ = scenarios.ensure(cache, key, False)
    ours: list[float] = []
    go: list[float] = []
    for r in range(args.rounds):
        # Each round's copies and outputs are put aside and deleted at the end (see Trash:
        # a round right after thousands of deletions pays for them, 3,000 small files 5x).
        tmp = Path(tempfile.mkdtemp(dir=cache))
        try:
            src = tmp / "src"
            shutil.copytree(tree, src, symlinks=True)
            root = tmp / "root"
            root.mkdir()
            os.sync()
            total, log = trio.run(_one, src, root)
            ours.append(total)
            print(f"[{key} round {r}] memoh-trio in-process {total:.3f} s")
            if not args.quiet:
                _print_log(log)
            if args.go_seed:
                src2 = tmp / "src2"
                shutil.copytree(tree, src2, symlinks=True)
                root2 = tmp / "root2"
                root2.mkdir()
                os.sync()
                go.append(_go(src2, root2))
                print(f"[{key} round {r}] Memoh Go migrator {go[-1]:.3f} s")
        finally:
            trash.put(tmp)
    line = f"== {key}: memoh-trio in-process median {statistics.median(ours):.3f} s"
    if go:
        line += f", Go migrator median {statistics.median(go):.3f} s"
    print(line)
    sys.stdout.flush()


def _print_log(log: list[tuple[str, float, float, int]]) -> None:
    sums: dict[str, list[float]] = defaultdict(list)
    for what, s, e, _n in log:
        sums[what].append(e - s)
    for what, s, e, n in sorted(log, key=lambda x: x[1]):
        if what.startswith("exec"):
            print(f"    {what:22} {s:6.3f}-{e:6.3f} ({e - s:.3f} s) stdin {n}")
    print("    sums: " + ", ".join(
        f"{k} {len(v)}x {sum(v):.3f}" for k, v in sorted(sums.items())))


def _go(src: Path, root: Path) -> float:
    server = subprocess.Popen([str(GO_SERVER), "--root", str(root), "--listen", "127.0.0.1:0"],
                              stdout=subprocess.PIPE, env=SERVER_ENV)
    try:
        assert server.stdout is not None
        target = server.stdout.readline().decode().split()[-1]
        t0 = time.monotonic()
        subprocess.run([str(GO_SEED), str(src), target], check=True, capture_output=True)
        return time.monotonic() - t0
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
