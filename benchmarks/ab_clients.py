"""A/B of memoh-trio client versions (git revisions, options), interleaved, with both ends' CPU.

    .venv/bin/python -m benchmarks.ab_clients --scenario b --rounds 9 \\
        --client "before=main" --client "after=." --client "64k=. --chunk-size 65536"

Each ``--client`` is ``LABEL=REV [memoh_client options...]``: REV is a git revision whose
``src/memoh_trio`` is exported (``git archive``) and imported instead of the working tree's, or
``.`` for the working tree; the options go to ``benchmarks.memoh_client`` (``--concurrency N``,
``--chunk-size BYTES``). For every round and client: a fresh server (``--server go``: Memoh's Go
server, the default; ``memoh``: ``python -m memoh_trio serve``) over a fresh root, an untimed
``sync``, then the client migrates the scenario's cached tree (the one ``run.py`` generates).
One untimed run comes first (the first run of a comparison was always the slowest), and each
round starts with the next client, so no client is always first.
Outputs of 100+ files are put aside and deleted at the end, as ``run.py`` does (``Trash``).
Printed per run and as medians: the client's in-process seconds (connect + migrate + rename),
its whole process's wall time, its CPU seconds (the timed region) and the server's CPU seconds
(user + system, from ``listening`` to the client's exit). Where ``run.py`` compares contenders
and ``ab_servers`` server variants, this takes versions of the client apart.

With ``--cli`` each client runs the console script's code (``memoh-trio migrate SRC --target T
--json`` plus its options) instead: the seconds are then the whole process's wall time and its
CPU the process's user + system time (startup included), as ``run.py``'s CLI row measures.
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import scenarios
from benchmarks._measure import parse_result
from benchmarks.run import (
    KEEP_ASIDE_MIN_FILES,
    MEMOH_GO_SERVER,
    REPO,
    ServerProc,
    Trash,
    _env,
    proc_times,
)

PY = sys.executable


@dataclass
class Client:
    label: str
    rev: str
    options: list[str]
    pythonpath: str | None = None  # the exported tree's src, for a revision
    seconds: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)


def parse_client(text: str) -> Client:
    label, sep, rest = text.partition("=")
    words = shlex.split(rest)
    if not sep or not label or not words:
        raise argparse.ArgumentTypeError(f"--client must be LABEL=REV [options]: {text!r}")
    return Client(label, words[0], words[1:])


def export(client: Client, into: Path) -> None:
    """``src/memoh_trio`` of the client's revision under ``into``, byte-compiled (the working
    tree's in place: see :func:`benchmarks.run.compile_package`)."""
    if client.rev == ".":
        compileall.compile_dir(str(REPO / "src" / "memoh_trio"), quiet=1)
        return
    tree = into / client.label
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", client.rev, "src/memoh_trio"], cwd=REPO,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    compileall.compile_dir(str(tree / "src"), quiet=1)
    client.pythonpath = str(tree / "src")


#: What the ``memoh-trio`` console script runs (``[project.scripts]``), as ``python -c``: so that
#: a revision's export on ``PYTHONPATH`` is the one imported.
CONSOLE_SCRIPT = "import sys; from memoh_trio._cli import main; sys.exit(main())"


def _cli_result(stdout: str, wall: float, usage0: resource.struct_rusage,
                usage: resource.struct_rusage) -> dict[str, float] | None:
    """A ``--cli`` run's figures: its wall time and CPU (user + system); ``None`` unless its
    JSON report says migrated."""
    try:
        report = json.loads(stdout)
    except ValueError:
        return None
    if not isinstance(report, dict) or report.get("status") != "migrated":
        return None
    cpu = (usage.ru_utime - usage0.ru_utime) + (usage.ru_stime - usage0.ru_stime)
    return {"seconds": wall, "cpu": cpu}


def run_one(c: Client, server_kind: str, src: Path, manifest: scenarios.Manifest,
            trash: Trash, cli: bool = False) -> None:
    root = Path(tempfile.mkdtemp(prefix="ab-root-", dir=trash.dir.parent))
    if server_kind == "go":
        argv = [str(MEMOH_GO_SERVER), "--root", str(root), "--listen", "127.0.0.1:0"]
    else:
        argv = [PY, "-m", "memoh_trio", "serve", "--root", str(root), "--listen", "127.0.0.1:0"]
    env = _env()
    if c.pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([c.pythonpath, env["PYTHONPATH"]])
    with tempfile.TemporaryFile() as log:
        server = ServerProc(argv, log)
        try:
            os.sync()
            if cli:  # the console script's code path, whole process
                cmd = [PY, "-c", CONSOLE_SCRIPT, "migrate", str(src), "--target", server.target,
                       "--json", *c.options]
            else:
                cmd = [PY, "-m", "benchmarks.memoh_client", "--target", server.target,
                       "--src", str(src), *c.options]
            usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                                  check=False)
            wall = time.perf_counter() - t0
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            result = (_cli_result(done.stdout, wall, usage0, usage) if cli
                      else parse_result(done.stdout))
            if done.returncode != 0 or result is None:
                raise SystemExit(f"{c.label}: client failed ({done.returncode}):\n{done.stderr}")
            user, system, _ = proc_times(server.proc.pid)
        finally:
            server.stop()
            scenarios.restore_source(src)
            if manifest.files >= KEEP_ASIDE_MIN_FILES:  # as run.py: see run.Trash
                trash.put(root)
            else:
                shutil.rmtree(root, ignore_errors=True)
    c.seconds.append(float(result["seconds"]))
    c.wall.append(wall)
    c.cpu.append(float(result["cpu"]))
    c.server_cpu.append(user + system - server.cpu0)
    print(f"  {c.label:<16} {c.seconds[-1]:7.3f} s  process {wall:6.3f} s  "
          f"client CPU {c.cpu[-1]:5.3f} s  server CPU {c.server_cpu[-1]:5.2f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="b", choices=sorted(scenarios.SCENARIOS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--client", dest="clients", type=parse_client, action="append",
                    required=True, help='a variant: "LABEL=REV [memoh_client options...]"')
    ap.add_argument("--server", choices=["go", "memoh"], default="go")
    ap.add_argument("--smoke", action="store_true", help="the scenario's smoke-size tree")
    ap.add_argument("--cli", action="store_true",
                    help="run the console script (memoh-trio migrate SRC --json, options "
                         "appended) instead of benchmarks.memoh_client: whole-process figures")
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(os.environ.get("MEMOH_BENCH_CACHE",
                                                Path.home() / ".cache" / "memoh-trio-bench")))
    args = ap.parse_args(argv)
    clients: list[Client] = args.clients
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    src, manifest = scenarios.ensure(args.cache_dir, args.scenario, args.smoke)
    print(f"({args.scenario}) {scenarios.title(args.scenario, args.smoke)}: "
          f"{manifest.files:,} files, {manifest.bytes / 1e6:,.1f} MB; server {args.server}",
          flush=True)
    trash = Trash(args.cache_dir)
    with tempfile.TemporaryDirectory(prefix="ab-clients-") as trees:
        try:
            for c in clients:
                export(c, Path(trees))
            # The first run of a comparison was always slower, whoever ran it (its client
            # 0.55-0.60 s against 0.36-0.45 s for the rest on (c)): one untimed run first, and
            # each round starts with the next client.
            print("warm-up (not counted)", flush=True)
            run_one(dataclasses.replace(clients[0], label=f"({clients[0].label})", seconds=[],
                                        wall=[], cpu=[], server_cpu=[]),
                    args.server, src, manifest, trash, args.cli)
            for r in range(args.rounds):
                print(f"round {r + 1}", flush=True)
                k = r % len(clients)
                for c in clients[k:] + clients[:k]:
                    run_one(c, args.server, src, manifest, trash, args.cli)
        finally:
            trash.empty()
    print("medians:")
    for c in clients:
        print(f"  {c.label:<16} {statistics.median(c.seconds):7.3f} s  process "
              f"{statistics.median(c.wall):6.3f} s  client CPU {statistics.median(c.cpu):5.3f} s"
              f"  server CPU {statistics.median(c.server_cpu):5.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
