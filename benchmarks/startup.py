"""What a start costs: the interpreter, ``memoh-trio --version``, the imports of a migration, and a
no-op ``memoh-trio migrate`` (an empty directory: connect, check, nothing to do), each a whole
process, beside Memoh's Go migrator on the same empty directory.

    python -m benchmarks.startup [--repeat N]

``benchmarks/run.py`` adds this table to ``latest.md``. Figures for notes, never for tests.
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks._measure import CONTAINER_PATH

PY = sys.executable
GO_SERVER = Path(os.environ.get("MEMOH_GO_OUT", "/tmp/memoh-go")) / "memoh-go-server"
GO_SEED = Path(os.environ.get("MEMOH_GO_OUT", "/tmp/memoh-go")) / "memoh-go-seed"
#: The token our own server requires when Memoh's is absent (given through the environment).
TOKEN = "startup-bench-token"


@dataclass(frozen=True)
class Row:
    label: str
    command: str
    median: float
    best: float


def _cli() -> list[str]:
    script = Path(PY).parent / "memoh-trio"
    return [str(script)] if script.exists() else [PY, "-m", "memoh_trio"]


def _time(argv: Sequence[str], repeat: int, env: dict[str, str]) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, env=env)
        times.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: "
                               f"{done.stderr.decode(errors='replace')[-500:]}")
    return statistics.median(times), min(times)


def _server(root: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """Memoh's Go server where it is built, else ours: (process, target, its name)."""
    if os.access(GO_SERVER, os.X_OK):
        argv, name = [str(GO_SERVER), "-root", str(root), "-listen", "127.0.0.1:0"], "Memoh Go"
    else:
        argv = [PY, "-m", "memoh_trio", "serve", "--root", str(root), "--listen", "127.0.0.1:0"]
        name = "memoh-trio"
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MEMOH_TRIO_TOKEN": TOKEN,
                                 "PATH": CONTAINER_PATH})
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line:
        proc.kill()
        raise RuntimeError(f"{argv[0]} did not start")
    return proc, line.split()[-1].rpartition("=")[2], name


def measure(repeat: int = 10) -> tuple[list[Row], str]:
    """Each command ``repeat`` times (median and best); returns the rows and the server's name."""
    env = {**os.environ, "MEMOH_TRIO_TOKEN": TOKEN}
    cli = _cli()
    rows: list[Row] = []

    def add(label: str, argv: list[str], shown: str) -> None:
        med, best = _time(argv, repeat, env)
        rows.append(Row(label, shown, med, best))

    add("Python interpreter, nothing imported", [PY, "-c", "pass"], "python -c pass")
    add("`memoh-trio --version`", [*cli, "--version"], "memoh-trio --version")
    add("imports of a migration (trio, trio-asyncio, grpclib, betterproto2, the migrator)",
        [PY, "-c", "import memoh_trio._cli, memoh_trio._client, memoh_trio._migrate"],
        "python -c 'import memoh_trio._cli, memoh_trio._client, memoh_trio._migrate'")
    with tempfile.TemporaryDirectory(prefix="memoh-startup-") as tmp:
        root, empty = Path(tmp) / "root", Path(tmp) / "empty"
        root.mkdir()
        empty.mkdir()
        proc, target, name = _server(root)
        try:
            add(f"no-op `memoh-trio migrate` (empty directory, {name} server)",
                [*cli, "migrate", str(empty), "--target", target, "--json"],
                "memoh-trio migrate EMPTY --target T --json")
            if os.access(GO_SEED, os.X_OK) and name == "Memoh Go":
                add("Memoh's Go migrator, same empty directory",
                    [str(GO_SEED), str(empty), target], "memoh-go-seed EMPTY T")
        finally:
            proc.terminate()
            proc.wait()
            shutil.rmtree(root, ignore_errors=True)
    return rows, name


def render(rows: Sequence[Row], repeat: int) -> list[str]:
    lines = [
        f"## Startup: whole process, median (best) of {repeat}",
        "",
        "| what | command | median s | best s |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {r.label} | `{r.command}` | {r.median:.3f} | {r.best:.3f} |" for r in rows]
    lines.append("")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args(argv)
    rows, _ = measure(args.repeat)
    print("\n".join(render(rows, args.repeat)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
