"""The benchmark harness keeps working: a smoke run exercises every contender end to end.

No speed is asserted (the machine is shared); only that every contender copied the tree
correctly (run.py checks each destination's content against the source in smoke runs and
exits non-zero if any run failed) and that the report has a row for each of them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import _chart, fleet, run
from benchmarks.run import CONTENDERS, MEMOH_GO_SEED, MEMOH_GO_SERVER, SERVER_LABELS

REPO = Path(__file__).resolve().parent.parent


def test_smoke_run_reports_every_contender(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--scenarios", "a,d,e",
         "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--fleet"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    table = (out / "latest.md").read_text()
    # The fleet leads the same report as its headline, before the single-bot tables
    # (benchmarks/fleet.py's own test checks its rows).
    fleet_part = table.split(f"## {fleet.FLEET_TITLE}")[1].split("\n## ")[0]
    assert "FAILED" not in fleet_part, fleet_part
    assert table.index(fleet.FLEET_TITLE) < table.index("## Single bot: ") < table.index("## (a)")
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
    # One bot: Go time / memoh-trio time for (a) and (d), (e)'s CLI peak RSS. It and the
    # targets say what they measure, not which issue asked for them.
    headline = table.split("## Single bot: ")[1].split("\n## ")[0]
    targets = table.split("## Targets")[1].split("\n## ")[0]
    assert "issue" not in headline.lower() and "issue" not in targets.lower(), table
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


def test_publish_rule() -> None:
    # Only a full run, --publish or --out writes where the published figures are.
    def where(publish: bool = False, out: Path | None = None, smoke: bool = False,
              subset: bool = False) -> Path | None:
        return run.results_dir(publish=publish, out=out, smoke=smoke, subset=subset)

    assert where() == run.RESULTS
    assert where(subset=True) is None and where(smoke=True) is None
    assert where(subset=True, publish=True) == run.RESULTS
    assert where(subset=True, out=Path("/x")) == Path("/x") == where(out=Path("/x"))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke",
                           "--publish"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--publish" in proc.stderr, proc.stderr


def test_subset_run_leaves_published_results_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # A real (not smoke) run of one scenario and one contender, twice: without --publish its
    # report goes to a new temporary directory, with --publish to the published directory
    # (here a stand-in, so a broken rule cannot overwrite the committed figures).
    published = tmp_path / "published"
    monkeypatch.setattr(run, "RESULTS", published)
    argv = ["--scenarios", "b", "--contenders", "cp", "--repeat", "1", "--settle", "0",
            "--no-startup", "--cache-dir", str(tmp_path / "cache")]
    assert run.main(argv) == 0
    printed = capsys.readouterr().out
    assert not published.exists(), printed
    wrote = printed.split("\nwrote ")[1].split(" and ")[0]
    try:
        assert Path(wrote).name == "latest.md" and "subset-" in Path(wrote).parent.name
        assert "| cp -r | - |" in Path(wrote).read_text()
        assert "--publish writes there" in printed
    finally:
        shutil.rmtree(Path(wrote).parent)
    try:
        assert run.main([*argv, "--publish"]) == 0
        assert "| cp -r | - |" in (published / "latest.md").read_text()
        assert (published / "latest.png").read_bytes().startswith(b"\x89PNG")
    finally:  # the 256 MiB tree of (b) is not kept with pytest's last temporary directories
        shutil.rmtree(tmp_path / "cache", ignore_errors=True)


def test_chart_of_the_published_report(tmp_path: Path) -> None:
    # The committed report read back and redrawn (no benchmark runs): the headline has its own
    # panel, cp -r and raw TCP are reference marks and never bars, every bar says how its time
    # was taken, one legend explains it all, and nothing is named after an issue number.
    report = REPO / "benchmarks" / "results" / "latest.md"
    data = _chart.read_report(report.read_text(), run.chart_series(CONTENDERS))
    assert list(data.titles) == ["a", "b", "c", "d", "e"]
    assert data.point("a", "go-seed") is not None and data.point("a", "cli@go") is not None
    assert data.points["d"]["seed"].why == "skipped"
    fig = _chart.build_figure(data, run.GO_TARGETS)
    headline, *panels = [ax for ax in fig.axes if ax.axison]
    assert "Memoh's Go migrator" in headline.get_title(loc="left")
    assert len(panels) == 5
    for ax in (headline, *panels):
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels and all(label.endswith(("(whole process)", "(in process)"))
                              for label in labels), labels
        assert not any(label.startswith(("cp -r", "raw TCP")) for label in labels), labels
    assert {t.get_text().split(" (")[0].split(": ")[0] for t in headline.get_yticklabels()} \
        == set(_chart.HEADLINE_NAMES.values())
    legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    for wanted in ("whole process", "in process", "reference: cp -r", "reference: raw TCP",
                   "target"):
        assert any(text.startswith(wanted) for text in legend), legend
    texts = [t.get_text() for ax in fig.axes for t in ax.texts] + legend + [
        ax.get_title(loc=loc) for ax in fig.axes for loc in ("left", "right")]
    assert not any("issue" in t.lower() for t in texts)
    out = tmp_path / "redrawn"
    out.mkdir()
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--replot",
                           str(report), "--out", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (out / "latest.png").read_bytes().startswith(b"\x89PNG")
def test_fleet_smoke(tmp_path: Path) -> None:
    # Issue 25's fleet, 3 bots of 12 files: every contender migrated every bot (renamed, every
    # file identical: fleet.py checks the content and fails the run otherwise), each bot into
    # its own Memoh Go server under busybox+python3 on 127.0.0.N with one port.
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.fleet", "--smoke", "--cache-dir",
         str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    why = fleet.missing()
    if why is not None:  # says why, fails nothing
        assert f"Not run: {why}" in proc.stdout
        return
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    for c in fleet.CONTENDERS:
        main_row = next(r for r in rows if r.startswith(f"| {c.label} | "))
        assert main_row.endswith(f"| {fleet.SMOKE_BOTS}/{fleet.SMOKE_BOTS} |"), main_row
        cells = [x.strip() for x in main_row.strip("|").split("|")]
        assert all(float(x.replace(",", "")) >= 0 for x in cells[1:8]), main_row
        per_bot = [r for r in rows if r.startswith(f"| {c.label} | ") and r != main_row]
        assert len(per_bot) == 1, rows  # where the CPU goes, per bot
    # the three targets, measured (not judged: a smoke run)
    for name in ("fleet wall", "fleet total CPU", "migrate-all peak RSS"):
        line = next(r for r in rows if name in r)
        assert "not measured" not in line and "(smoke)" in line, line
    # one bot's phases: its RPCs (the agent's one Exec among them) and, inside that Exec, the
    # agent's requests, each timed: its hello first, its bye last, batches and the flush between
    phases = proc.stdout.split("One bot's phases")[1]
    assert "| exec:agent | 1 |" in phases, phases
    names = [r.split("|")[1].strip() for r in phases.splitlines() if r.startswith("| agent:")]
    assert names[0] == "agent:hello" and names[-1] == "agent:bye", phases
    assert "agent:flush" in names and "agent:files" in names, phases
    assert not (tmp_path / "cache" / "fleet-v1" / "3-smoke" / "bots" / "bot-000.migrated").exists()


def test_agent_count_smoke(tmp_path: Path) -> None:
    # Issue 25's count: one bot migrated today and by the agent, each into Memoh's Go server
    # under busybox+python3 traced with strace; the agent starts one process (sh exec'ing
    # python3: two execve), and both leave the destination identical to the source.
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.agent_count", "--smoke", "--replay", "1",
         "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    if fleet.missing() is not None:
        assert proc.stdout.startswith("skipped"), proc.stdout
        return
    rows = {line.split(" | ")[0].lstrip("| "): line for line in proc.stdout.splitlines()
            if line.startswith("| ")}
    agent = rows["the agent doing the same work (one Exec)"]
    assert agent.endswith("| 1 | 2 | sh 1, python3 1 | identical (content, modes, ns mtimes) |")
    today = rows["memoh-trio today (migrate_bot: the agent)"]
    assert today.endswith("| 1 | 2 | sh 1, python3 1 | identical (content, modes, ns mtimes) |")
    per_step = rows["memoh-trio, a process per step (migrate_bot, agent=False)"].split(" | ")
    assert int(per_step[1]) > 1 and "identical" in per_step[4], per_step
    # --replay: the agent's CPU for the bot's recorded frames, with no server between
    for label in ("agent, one bot's frames", "agent, hello and bye only", "cp -a of the tree"):
        assert rows[label].count("|") == 4, rows[label]
