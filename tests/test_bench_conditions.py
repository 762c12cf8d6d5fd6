"""The harness's check of the machine's state before a run (benchmarks/_conditions.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from benchmarks import _conditions as C


def test_settled_needs_two_probes_that_agree() -> None:
    assert not C.settled([])
    assert not C.settled([0.07])
    assert C.settled([0.07, 0.08])
    assert C.settled([2.4, 0.5, 0.08, 0.07])
    assert not C.settled([0.5, 0.07])  # still falling
    assert not C.settled([0.07, 0.5])  # rising again
    assert C.settled([0.10, 0.125]) and not C.settled([0.10, 0.126])


def test_two_slow_probes_are_not_settled_where_it_has_been_fast() -> None:
    assert not C.settled([0.52, 0.43], best=0.045)  # a plateau after a mass deletion
    assert C.settled([0.05, 0.045], best=0.045)
    assert C.settled([0.09, 0.09], best=0.045) and not C.settled([0.091, 0.091], best=0.045)
    assert C.settled([0.52, 0.43])  # nothing known of this machine yet


def test_settle_keeps_the_fastest_probe_for_the_next_runs(tmp_path: Path) -> None:
    C.settle(tmp_path, lambda p: None, max_wait=0.0, sleep=lambda s: None)
    assert not (tmp_path / "probe-best").exists()  # one probe, not settled: teaches nothing
    found = C.settle(tmp_path, lambda p: None, max_wait=10 * C.PROBE_EVERY,
                     sleep=lambda s: None)
    assert found.is_settled  # nothing known yet: two probes that agree
    first = float((tmp_path / "probe-best").read_text())
    assert first == round(min(found.probes), 6)
    (tmp_path / "probe-best").write_text("0.000001\n")  # a machine once far faster
    found = C.settle(tmp_path, lambda p: None, max_wait=2 * C.PROBE_EVERY, sleep=lambda s: None)
    assert found.best == 0.000001 and not found.is_settled and len(found.probes) == 3
    assert "fastest seen here before: 0.000 s" in found.describe()
    assert float((tmp_path / "probe-best").read_text()) == 0.000001  # not raised
    assert first > 0


def test_memory_free_reads_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:         6000000 kB\n"
                       "MemAvailable:   23000000 kB\n")
    assert C.memory_free(meminfo) == 0.25
    meminfo.write_text("nothing useful\n")
    assert C.memory_free(meminfo) is None
    assert C.memory_free(tmp_path / "absent") is None


def test_settle_probes_until_two_agree(tmp_path: Path) -> None:
    """Real copies of the probe tree, each put aside (not deleted); waits are not slept here."""
    aside: list[Path] = []
    slept: list[float] = []
    found = C.settle(tmp_path, aside.append, max_wait=10 * C.PROBE_EVERY, sleep=slept.append)
    assert 2 <= len(found.probes) == len(aside) <= 11  # at most 10 waits fit in max_wait
    assert slept == [C.PROBE_EVERY] * (len(found.probes) - 1)
    for copy in aside:
        assert len(list(copy.rglob("f*"))) == C.PROBE_FILES
    assert found.is_settled == C.settled(found.probes, best=found.best)
    assert "file-creation probe (1,000 files copied)" in found.describe()


def test_settle_without_waiting_probes_once(tmp_path: Path) -> None:
    aside: list[Path] = []
    found = C.settle(tmp_path, aside.append, max_wait=0.0, sleep=lambda s: None)
    assert len(found.probes) == 1 and not found.is_settled
    assert "not settled" in found.describe()


def test_describe_warns_when_most_memory_is_free() -> None:
    assert "warning" in C.Conditions(free=0.8).describe()
    assert "warning" not in C.Conditions(free=0.2).describe()
    assert C.Conditions().describe() == "not checked"


# --------------------------------------------------------------------------- disk space


def test_disk_size_counts_whole_blocks() -> None:
    from benchmarks import scenarios

    assert scenarios.disk_size("b", True) == (2, 2 * 2**20 + 3 * 4096)  # two 1 MiB files
    files, used = scenarios.disk_size("d", True)  # 400 files of 16-256 B in 4 directories
    assert files == 400 and used == (400 + 4 + 3) * 4096
    _, real = scenarios.disk_size("e", False)
    assert real == 4 * 2**30 + 3 * 4096


def test_disk_needed_keeps_many_file_outputs_until_the_end(tmp_path: Path) -> None:
    from benchmarks import run, scenarios

    two = [c for c in run.CONTENDERS if c.key in ("memoh", "cp")]
    a, b = scenarios.disk_size("a", True)[1], scenarios.disk_size("b", True)[1]
    # Nothing generated yet: each tree once, (a)'s outputs (60 files: fewer than 100, so one
    # at a time) and (b)'s largest output at a time.
    assert run.disk_needed(["a", "b"], two, set(), {"a": 3, "b": 2}, tmp_path, True) == (
        a + b + max(a, b))
    # (d) smoke: 400 files, kept aside: repeats x contenders run, skips not counted.
    d = scenarios.disk_size("d", True)[1]
    assert run.disk_needed(["d"], two, {"d:cp"}, {"d": 3}, tmp_path, True) == d + 3 * d
    scenarios.ensure(tmp_path, "d", True)  # generated: no longer counted
    assert run.disk_needed(["d"], two, set(), {"d": 2}, tmp_path, True) == 4 * d


def test_a_run_without_room_is_refused_at_once(tmp_path: Path, capsys: Any,
                                               monkeypatch: Any) -> None:
    from benchmarks import run

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    code = run.main(["--smoke", "--scenarios", "a", "--cache-dir", str(tmp_path / "cache"),
                     "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == run.EXIT_NO_ROOM == 3
    assert len(err.splitlines()) == 1 and err.startswith("run.py: error: the run needs about")
    assert "0.0 GB are; hint: " in err, err
    assert not (tmp_path / "out" / "latest.md").exists()
