"""The terminal display: the progress line (rsync --info=progress2 style) and the report, as
rendered by rich at 80 columns, and the real CLI under a pseudo-terminal (``script``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from memoh_trio._display import (
    RateMeter,
    _Line,
    bot_line,
    format_duration,
    progress_text,
    report_lines,
    report_table,
)
from memoh_trio._progress import Progress, ProgressState, start_fleet
from memoh_trio._report import Failure, MigrationReport, Skipped

MiB = 2**20


def render(renderable: object, width: int = 80) -> str:
    console = Console(record=True, width=width, force_terminal=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_rate_from_the_first_second_while_totals_still_grow() -> None:
    meter = RateMeter(start=0.0)
    assert meter.rate() is None
    meter.add(0.25, 2 * MiB)
    assert meter.rate() == pytest.approx(8 * MiB)
    meter.add(1.0, 10 * MiB)
    assert meter.rate() == pytest.approx(10 * MiB)
    for t in range(2, 20):  # a steady 4 MiB/s later: the window forgets the start
        meter.add(float(t), 10 * MiB + (t - 1) * 4 * MiB)
    assert meter.rate() == pytest.approx(4 * MiB)


def test_progress_text_counts_files_and_uses_binary_units() -> None:
    state = ProgressState(files_done=660, files_total=1130, bytes_done=5 * MiB,
                          bytes_total=20 * MiB, scanning=True)
    text = progress_text(state, 2.5 * MiB)
    assert "660/1,130+ files" in text  # a count, not "0.6/1.1 KiB"
    assert "5.0/20.0 MiB+" in text
    assert "25%" in text and "2.5 MiB/s" in text
    assert "ETA 0:00:06" in text  # 15 MiB left at 2.5 MiB/s, while the walk goes on
    assert "KiB" not in text and "MB/s" not in text and "bytes" not in text
    assert str(5 * MiB) not in text  # no raw byte counts


def test_progress_text_when_done_and_in_a_dry_run() -> None:
    done = ProgressState(files_done=3, files_total=3, bytes_done=MiB, bytes_total=MiB,
                         scanning=False, finished=True, bots_done=2, bots_total=2)
    text = progress_text(done, MiB)
    assert text.startswith("bots 2/2  3/3 files  1.0/1.0 MiB  100%")
    assert "+" not in text and "ETA" not in text
    dry = progress_text(ProgressState(files_total=7, bytes_total=3 * MiB), None, dry_run=True)
    assert "/s" not in dry and "ETA" not in dry
    assert dry == "dry run: found 7+ files, 3.0 MiB+"


def test_format_duration() -> None:
    assert format_duration(0) == "0:00:00"
    assert format_duration(61.2) == "0:01:02"
    assert format_duration(3 * 3600 + 5) == "3:00:05"


def test_progress_line_is_one_line_at_80_columns() -> None:
    progress = Progress()
    start_fleet(progress, 12)
    progress.found(123_456, 98 * 2**30)
    progress.sent(40 * 2**30)
    line = _Line(progress, 0.0, dry_run=False)
    line.meter.add(10.0, 40 * 2**30)
    text = render(line).rstrip("\n")
    assert "\n" not in text, text
    assert len(text) <= 80
    assert "bots 0/12" in text and "ETA" in text and "GiB/s" in text
    assert "━" in render(line, width=100)  # the bar takes what the text leaves
    progress = Progress()
    progress.found(400, 24 * MiB)
    progress.sent(3 * MiB)
    line = _Line(progress, 0.0, dry_run=False)
    line.meter.add(1.0, 3 * MiB)
    text = render(line).rstrip("\n")
    assert "\n" not in text and len(text) <= 80 and "━" in text, text
    narrow = render(line, width=40).rstrip("\n")
    assert "\n" not in narrow and len(narrow) <= 40  # no bar, the text cut with an ellipsis
    assert "━" not in narrow and narrow.endswith("…")


def reports() -> list[MigrationReport]:
    return [
        MigrationReport("/data/bots/a-rather-long-bot-identifier", status="already-migrated",
                        bot_id="a-rather-long-bot-identifier"),
        MigrationReport("/data/bots/b2", status="incomplete", files=1234, bytes=5 * 2**30,
                        seconds=12.5, bot_id="b2", error="3 entries failed",
                        failures=[Failure(f"f{i}", "boom") for i in range(30)],
                        skipped=[Skipped("s.sock", "socket: not copied")]),
        MigrationReport("/data/bots/b3", status="migrated", files=10, bytes=3 * MiB,
                        seconds=1.5, bot_id="b3", unchanged=4, dirs=2, symlinks=1,
                        renamed_to="/data/bots/b3.migrated"),
    ]


def test_report_table_fits_80_columns_with_whole_headers() -> None:
    text = render(report_table(reports()))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, text
    header = next(line for line in lines if "status" in line)
    assert header.split() == ["bot", "status", "files", "size", "skipped", "failed", "time",
                              "MiB/s"]
    assert "…" not in header
    row = next(line for line in lines if line.startswith("b3 "))
    assert row.split()[-2:] == ["1.5s", "2.0"]  # MiB/s, like the progress line


def test_dry_run_and_idle_rows_show_no_rate() -> None:
    text = render(report_table([MigrationReport("/s", status="dry-run", files=3, bytes=MiB,
                                                seconds=0.001)]))
    row = next(line for line in text.splitlines() if "dry-run" in line)
    assert row.split()[-1] == "-"


def test_report_lines_cap_lists_and_name_the_bot() -> None:
    lines = report_lines(reports(), limit=20)
    failed = [line for line in lines if line.startswith("FAILED")]
    assert len(failed) == 21
    assert failed[0] == "FAILED   b2: f0: boom"
    assert failed[-1] == "FAILED   b2: … and 10 more (--json lists them all)"
    assert "skipped  b2: s.sock: socket: not copied" in lines
    assert "b3: also: 4 unchanged (already in the container), 2 empty directories, " \
           "1 symlink" in lines
    assert len([line for line in report_lines(reports(), limit=None)
                if line.startswith("FAILED")]) == 30


def test_bot_line() -> None:
    r = reports()
    assert bot_line(r[0]) == "a-rather-long-bot-identifier: already-migrated"
    assert bot_line(r[1]).startswith("b2: incomplete, 1,234 files, 5.0 GiB in 12.5 s, "
                                     "30 failed")
    assert bot_line(r[2]) == "b3: migrated, 10 files, 3.0 MiB, 4 unchanged in 1.5 s"


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux script")
def test_demo_under_a_real_terminal(tmp_path: Path) -> None:
    """``memoh-trio demo`` in a pseudo-terminal 80 columns wide: the progress line is drawn
    (files counted, binary rate), the table fits, and the last line names no deleted path."""
    env = {**os.environ, "COLUMNS": "80", "LINES": "24", "TERM": "xterm"}
    cmd = f"{sys.executable} -m memoh_trio demo --files 200"
    done = subprocess.run(["script", "-q", "-e", "-c", cmd, str(tmp_path / "typescript")],
                          capture_output=True, text=True, env=env, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", done.stdout).replace("\r", "\n")
    lines = [line for line in screen.splitlines() if line.strip()]
    assert any(re.search(r"\d+/\d+\+? files .*MiB", line) for line in lines), screen
    table = [line for line in lines if "status" in line and "files" in line]
    assert table and all(len(line) <= 80 for line in table), table
    assert "MB/s" not in screen and "bytes/s" not in screen
    last = lines[-1]
    assert "memoh-trio-demo-" not in last, last


def test_report_lines_say_when_mtimes_are_whole_seconds() -> None:
    busybox = MigrationReport("/s", status="migrated", mtime_precision="s")
    assert any("mtimes: whole seconds" in line for line in report_lines([busybox], limit=5))
    exact = MigrationReport("/s", status="migrated", mtime_precision="ns")
    assert not any("mtimes" in line for line in report_lines([exact], limit=5))


def test_progress_says_100_percent_only_when_everything_finished() -> None:
    """All bytes sent while 2 of 5 bots (or a file's placement) still finish: 99%, not 100%
    (issue 26)."""
    from memoh_trio._display import progress_text
    from memoh_trio._progress import ProgressState

    fleet = ProgressState(files_done=10, files_total=10, bytes_done=100, bytes_total=100,
                          scanning=False, bots_done=3, bots_total=5)
    assert " 99%" in progress_text(fleet, None)
    one = ProgressState(files_done=9, files_total=10, bytes_done=100, bytes_total=100,
                        scanning=False)
    assert " 99%" in progress_text(one, None)
    done = ProgressState(files_done=10, files_total=10, bytes_done=100, bytes_total=100,
                         scanning=False, bots_done=5, bots_total=5)
    assert " 100%" in progress_text(done, None)
