"""The benchmark harness keeps working: a smoke run exercises every contender end to end.

No speed is asserted (the machine is shared); only that every contender copied the tree
correctly (run.py checks each destination's content against the source in smoke runs and
exits non-zero if any run failed) and that the report has a row for each of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from benchmarks.run import CONTENDERS, MEMOH_GO_SEED, MEMOH_GO_SERVER, SERVER_LABELS

REPO = Path(__file__).resolve().parent.parent


def test_smoke_run_reports_every_contender(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--scenarios", "a,d,e",
         "--out", str(out), "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    table = (out / "latest.md").read_text()
    assert (out / "latest.png").read_bytes().startswith(b"\x89PNG")
    for section in ("## (a)", "## (d)", "## (e)", "## Targets"):
        assert section in table
    assert "- Conditions at the start (`benchmarks/_conditions.py`): " in table
    assert "file-creation probe (1,000 files copied)" in table
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    go_built = all(os.access(p, os.X_OK) for p in (MEMOH_GO_SERVER, MEMOH_GO_SEED))
    for c in CONTENDERS:
        row = f"| {c.label} | {SERVER_LABELS[c.server]} |"
        matching = [r for r in rows if r.startswith(row)]
        assert len(matching) == 3, f"{row} should appear once per scenario:\n{table}"
        assert all("FAILED" not in r for r in matching), table
        if c.server == "go" and not go_built:  # skipped, saying why and how to build them
            assert all("skipped: Memoh's Go binaries not built" in r for r in matching), table
        else:
            assert all("skipped" not in r for r in matching), table
    assert "## Failed runs" not in table
    # Issue 12's headline: Go time / memoh-trio time for (a) and (d), (e)'s CLI peak RSS.
    headline = table.split("## Headline (issue 12)")[1].split("\n## ")[0]
    for key in ("(a)", "(d)", "(e)"):
        line = next(r for r in headline.splitlines() if r.startswith(f"| {key}"))
        assert ("x |" in line) == go_built, line  # a ratio where both ran, else the reason
        if not go_built:
            assert "Go binaries not built" in line, line
    # Startup (benchmarks/startup.py): each command ran and has a time, the Go migrator's row
    # only where it is built.
    startup = table.split("## Startup")[1].split("\n## ")[0]
    for label in ("`memoh-trio --version`", "no-op `memoh-trio migrate`"):
        line = next(r for r in startup.splitlines() if label in r)
        assert line.rstrip().endswith(" |") and " 0." in line, line
    assert ("Memoh's Go migrator, same empty directory" in startup) == go_built, startup
    # Outputs of the many-file scenario (d) were put aside during the run, removed at its end.
    assert "run outputs kept aside" in proc.stdout
    assert not list((tmp_path / "cache").glob("trash-*"))


def test_ab_servers_smoke(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.ab_servers", "--smoke", "--scenario", "c",
         "--rounds", "1", "--server", "memoh", "--server", "memoh --no-direct-io@1",
         "--server", "grpcio", "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    medians = proc.stdout.split("medians:")[1].splitlines()
    for label in ("memoh ", "memoh --no-direct-io@1", "grpcio"):
        assert any(line.strip().startswith(label.strip()) and " s " in line for line in medians)


def test_ab_clients_smoke(tmp_path: Path) -> None:
    # A revision's exported tree and the working tree, one with client options, on our server
    # (Memoh's Go server may not be built here).
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.ab_clients", "--smoke", "--scenario", "b",
         "--rounds", "2", "--server", "memoh", "--client", "head=HEAD",
         "--client", "tree=. --chunk-size 65536", "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # An untimed run first, then each round starts with the next client.
    runs = [line.split()[0] for line in proc.stdout.split("medians:")[0].splitlines()
            if line.startswith("  ")]
    assert runs == ["(head)", "head", "tree", "tree", "head"], proc.stdout
    medians = proc.stdout.split("medians:")[1].splitlines()
    for label in ("head ", "tree "):
        assert any(line.strip().startswith(label.strip()) and "server CPU" in line
                   for line in medians)


def test_bench_direct_io_smoke(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_direct_io", "--size-mib", "4", "--rounds", "1",
         "--dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "page cache  median" in proc.stdout and "O_DIRECT    median" in proc.stdout
    assert not list(tmp_path.glob("direct-io-*"))  # its temporary directory is gone
