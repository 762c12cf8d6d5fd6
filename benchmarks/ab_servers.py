"""A/B of server variants under the memoh-trio client, interleaved, with the server's costs.

    .venv/bin/python -m benchmarks.ab_servers --scenario b --rounds 5 \\
        --server memoh --server "memoh --no-direct-io" --server grpcio

Each ``--server`` is ``memoh [serve options...]`` (``python -m memoh_trio serve``) or ``grpcio``
(the grpcio peer, ``benchmarks.servers grpcio``), optionally followed by ``@N`` for the client's
concurrency (``"memoh@1"``). For every round and variant: a fresh server over a fresh root, an
untimed ``sync``, then ``benchmarks.memoh_client`` migrates the scenario's cached tree (the one
``run.py`` generates). Printed per run and as medians: the client's seconds, and the server
process's user and system CPU seconds, minor page faults and peak RSS (from ``/proc``, startup
included). Where ``run.py`` compares contenders, this takes a few variants of one side apart.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import scenarios
from benchmarks._measure import parse_result
from benchmarks.run import REPO, ServerProc, _env, proc_peak_rss, proc_times

PY = sys.executable


@dataclass
class Variant:
    label: str
    kind: str  # "memoh" | "grpcio"
    options: list[str]
    concurrency: int | None
    seconds: list[float] = field(default_factory=list)
    user: list[float] = field(default_factory=list)
    system: list[float] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)
    rss_mib: list[int] = field(default_factory=list)


def parse_variant(text: str) -> Variant:
    spec, _, conc = text.partition("@")
    words = shlex.split(spec)
    if not words or words[0] not in ("memoh", "grpcio"):
        raise argparse.ArgumentTypeError(f"--server must start with memoh or grpcio: {text!r}")
    if words[0] == "grpcio" and len(words) > 1:
        raise argparse.ArgumentTypeError("the grpcio server takes no options")
    return Variant(text, words[0], words[1:], int(conc) if conc else None)


def run_one(v: Variant, src: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="ab-root-"))
    if v.kind == "memoh":
        argv = [PY, "-m", "memoh_trio", "serve", "--root", str(root), "--listen", "127.0.0.1:0",
                *v.options]
    else:
        argv = [PY, "-m", "benchmarks.servers", "grpcio", "--root", str(root)]
    with tempfile.TemporaryFile() as log:
        server = ServerProc(argv, log)
        try:
            os.sync()
            client = [PY, "-m", "benchmarks.memoh_client", "--target", server.target,
                      "--src", str(src)]
            if v.concurrency is not None:
                client += ["--concurrency", str(v.concurrency)]
            done = subprocess.run(client, cwd=REPO, env=_env(), capture_output=True, text=True,
                                  check=False)
            result = parse_result(done.stdout)
            if done.returncode != 0 or result is None:
                raise SystemExit(f"{v.label}: client failed ({done.returncode}):\n{done.stderr}")
            user, system, faults = proc_times(server.proc.pid)
            rss = proc_peak_rss(server.proc.pid) // (1024 * 1024)
        finally:
            server.stop()
            scenarios.restore_source(src)
            shutil.rmtree(root, ignore_errors=True)
    v.seconds.append(float(result["seconds"]))
    v.user.append(user)
    v.system.append(system)
    v.faults.append(faults)
    v.rss_mib.append(rss)
    print(f"  {v.label:<28} {v.seconds[-1]:7.3f} s  server user {user:5.2f} s  "
          f"sys {system:5.2f} s  minflt {faults:>8}  peak RSS {rss:4d} MiB", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="b", choices=sorted(scenarios.SCENARIOS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--server", dest="variants", type=parse_variant, action="append",
                    help='a variant, e.g. "memoh", "memoh --no-direct-io", "grpcio", "memoh@1"')
    ap.add_argument("--smoke", action="store_true", help="the scenario's smoke-size tree")
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(os.environ.get("MEMOH_BENCH_CACHE",
                                                Path.home() / ".cache" / "memoh-trio-bench")))
    args = ap.parse_args(argv)
    variants: list[Variant] = args.variants or [parse_variant("memoh"), parse_variant("grpcio")]
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    src, manifest = scenarios.ensure(args.cache_dir, args.scenario, args.smoke)
    print(f"({args.scenario}) {scenarios.title(args.scenario, args.smoke)}: "
          f"{manifest.files:,} files, {manifest.bytes / 1e6:,.1f} MB", flush=True)
    for r in range(args.rounds):
        print(f"round {r + 1}", flush=True)
        for v in variants:
            run_one(v, src)
    print("medians:")
    for v in variants:
        print(f"  {v.label:<28} {statistics.median(v.seconds):7.3f} s  server user "
              f"{statistics.median(v.user):5.2f} s  sys {statistics.median(v.system):5.2f} s  "
              f"minflt {int(statistics.median(v.faults)):>8}  peak RSS {max(v.rss_mib):4d} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
