"""Terminal output of the CLI: a one-line progress display fed by a :class:`Progress`, and the
report table.

The progress line follows ``rsync --info=progress2``: one line, files as counts, bytes in binary
units, the rate and ETA from the first second (the rate is measured here over a sliding window,
not by rich, which resets a task's speed whenever its total changes, and totals grow while the
walk is still discovering files). The pure parts (:class:`RateMeter`, :func:`progress_text`,
:func:`report_lines`) are tested without a terminal. Only the CLI uses this module; the library
never prints.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TextIO

import trio
from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ._plan import escape_name
from ._progress import Progress, ProgressState
from ._report import MigrationReport
from ._units import format_size

#: Seconds of history behind the displayed rate (rsync averages over a few seconds too).
RATE_WINDOW = 5.0
#: Redraws per second.
REFRESH_PER_SECOND = 4
#: Failures and skipped entries listed per report on a terminal; ``--json`` has them all.
TERMINAL_LIST_LIMIT = 20
#: Widest and narrowest progress bar drawn before the text of the progress line.
BAR_WIDTH = 30
MIN_BAR_WIDTH = 8
#: Width of the report when stdout is not a terminal (and the most it takes on a wider one).
PIPE_WIDTH = 80


class RateMeter:
    """Bytes per second over the last :data:`RATE_WINDOW` seconds (pure: the caller gives the
    time). Before the first window is full, the rate is the average since the start."""

    def __init__(self, start: float, window: float = RATE_WINDOW) -> None:
        self._window = window
        self._samples: collections.deque[tuple[float, int]] = collections.deque([(start, 0)])

    def add(self, now: float, done: int) -> None:
        """Record ``done`` bytes at time ``now``."""
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Bytes per second, or ``None`` before there is a measurable interval."""
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        if t1 - t0 < 0.2:
            return None
        return max(b1 - b0, 0) / (t1 - t0)


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (pure)."""
    s = max(0, math.ceil(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def progress_text(state: ProgressState, rate: float | None, *, dry_run: bool = False) -> str:
    """The text of the progress line (pure), e.g.
    ``bots 1/3  120/400 files  1.2/24.5 MiB  5%  3.1 MiB/s  ETA 0:00:07``.

    While the walk is still discovering, totals carry a ``+`` (they may grow), and the ETA is
    for what was found so far.
    """
    more = "+" if state.scanning else ""
    parts = []
    if state.bots_total:
        parts.append(f"bots {state.bots_done}/{state.bots_total}")
    if dry_run:  # nothing is sent: what the walk found, no rate, no ETA
        parts.append(f"dry run: found {state.files_total:,}{more} files, "
                     f"{format_size(state.bytes_total)}{more}")
        return "  ".join(parts)
    parts.append(f"{state.files_done:,}/{state.files_total:,}{more} files")
    parts.append(f"{_size_pair(state.bytes_done, state.bytes_total)}{more}")
    if state.bytes_total:
        percent = min(100, 100 * state.bytes_done // state.bytes_total)
        if not _all_done(state):
            percent = min(percent, 99)  # the bytes are there; files or bots still finish
        parts.append(f"{percent}%")
    if rate is not None:
        parts.append(f"{format_size(rate)}/s")
        left = state.bytes_total - state.bytes_done
        if rate > 0 and left > 0:
            parts.append(f"ETA {format_duration(left / rate)}")
    if state.failures:
        parts.append(f"{state.failures:,} failed")
    return "  ".join(parts)


def _all_done(state: ProgressState) -> bool:
    """Whether every file (and every bot of a fleet) is finished: only then 100%."""
    if state.finished:
        return True
    return (not state.scanning and state.files_done >= state.files_total
            and state.bots_done >= state.bots_total)


def _size_pair(done: int, total: int) -> str:
    """``1.2/24.5 MiB``: one unit, the total's, for both numbers."""
    full = format_size(total)
    number, _, unit = full.partition(" ")
    if unit == "B":
        return f"{done}/{total} B"
    scale = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]
    return f"{done / scale:.1f}/{number} {unit}"


class _Line:
    """The live renderable: a bar and the text, redrawn from the newest state."""

    def __init__(self, progress: Progress, start: float, dry_run: bool) -> None:
        self.progress = progress
        self.meter = RateMeter(start)
        self.dry_run = dry_run

    def sample(self, now: float) -> None:
        self.meter.add(now, self.progress.state.bytes_done)

    def __rich_console__(self, console: Console,
                         options: ConsoleOptions) -> Iterator[RenderableType]:
        state = self.progress.state
        text = progress_text(state, self.meter.rate(), dry_run=self.dry_run)
        # The text comes first; the bar takes what is left of the line (none on a narrow one).
        bar_width = min(BAR_WIDTH, options.max_width - len(text) - 1)
        if bar_width < MIN_BAR_WIDTH or self.dry_run:  # a dry run sends nothing: no bar
            yield Text(text, no_wrap=True, overflow="ellipsis")
            return
        total, done = state.bytes_total, state.bytes_done
        bar = ProgressBar(total=total or None, completed=done, width=bar_width,
                          pulse=state.scanning and not total)
        grid = Table.grid(padding=(0, 1))
        grid.add_row(bar, Text(text, no_wrap=True))
        yield grid


class LiveLine:
    """The progress line while it is drawn: :attr:`console` prints lines above it;
    :meth:`stop` clears it for good (a stopped run: its message starts a clean line and no
    frame follows)."""

    def __init__(self, console: Console, live: Live) -> None:
        self.console = console
        self._live = live
        self.stopped = False

    def stop(self) -> None:
        """Erase the progress line and draw it no more (idempotent)."""
        if not self.stopped:
            self.stopped = True
            self._live.transient = True  # rich erases a transient display as it stops
            self._live.stop()


@contextlib.asynccontextmanager
async def live_progress(progress: Progress, *, console: Console | None = None,
                        dry_run: bool = False) -> AsyncIterator[LiveLine]:
    """Show the progress line on stderr while the block runs; yields a :class:`LiveLine`, on
    whose console lines can be printed above the progress line (the fleet's per-bot lines)."""
    console = console or Console(stderr=True, highlight=False)
    line = _Line(progress, trio.current_time(), dry_run)
    live = Live(line, console=console, refresh_per_second=REFRESH_PER_SECOND,
                transient=False, redirect_stdout=False, redirect_stderr=False)
    handle = LiveLine(console, live)
    live.start()
    try:
        async with trio.open_nursery() as nursery:

            async def sample() -> None:
                while True:
                    line.sample(trio.current_time())
                    await trio.sleep(1 / REFRESH_PER_SECOND)

            nursery.start_soon(sample)
            try:
                yield handle
            finally:
                nursery.cancel_scope.cancel()
                if not handle.stopped:  # the last frame: final counts (none after a stop)
                    line.sample(trio.current_time())
                    live.refresh()
    finally:
        if not handle.stopped:
            handle.stopped = True
            live.stop()


# --- reports -----------------------------------------------------------------------------------


def _name(report: MigrationReport) -> str:
    """What names a report's row: its bot id, else its source's last component (escaped)."""
    return escape_name(report.bot_id or os.path.basename(report.source.rstrip("/"))
                       or report.source)


def bot_line(report: MigrationReport) -> str:
    """One line for a bot that just finished (``migrate-all``)."""
    name = _name(report)
    text = f"{name}: {report.status}"
    if report.status in ("migrated", "incomplete", "dry-run"):
        text += f", {_count(report.files, 'file')}, {format_size(report.bytes)}"
        if report.unchanged:
            text += f", {report.unchanged:,} unchanged"
        text += f" in {report.seconds:.1f} s"
    if report.failures:
        text += f", {len(report.failures):,} failed"
    if report.error and report.status == "incomplete":
        text += f": {report.error}"
    return text


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def _rate(r: MigrationReport) -> str:
    if r.status != "migrated" or r.seconds <= 0 or r.bytes == 0:
        return "-"
    return f"{r.bytes / r.seconds / 2**20:.1f}"


def report_table(reports: Sequence[MigrationReport], *, fleet: bool = False) -> Table:
    """The summary table; fits 80 columns (headers never truncated, names never cut: a long
    bot id wraps within its column, every character shown)."""
    table = Table(title="memoh-trio migration", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False, padding=(0, 1))
    # Only the name column gives way on a narrow terminal (it wraps: the id is the only thing
    # that names the row, it is never cut); the others keep their width, so no header is ever
    # truncated.
    table.add_column("bot" if fleet or any(r.bot_id for r in reports) else "source",
                     overflow="fold", min_width=6)
    for name in ("status", "files", "size", "skipped", "failed", "time", "MiB/s"):
        table.add_column(name, justify="left" if name == "status" else "right", no_wrap=True,
                         min_width=len(name))
    for r in reports:
        idle = r.status in ("already-migrated", "nothing-to-do")
        table.add_row(
            _name(r), r.status,
            "-" if idle else f"{r.files:,}", "-" if idle else format_size(r.bytes),
            f"{len(r.skipped):,}", f"{len(r.failures):,}",
            "-" if idle else f"{r.seconds:.1f}s", _rate(r),
        )
    return table


def report_lines(reports: Sequence[MigrationReport], *, limit: int | None) -> list[str]:
    """The lines under the table: what else was done, renames, skipped entries and failures
    (at most ``limit`` of each per report, then ``… and N more``), errors. Pure."""
    out: list[str] = []
    for r in reports:
        who = f"{escape_name(r.bot_id)}: " if r.bot_id else ""
        also = [text for n, text in (
            (r.unchanged, f"{r.unchanged:,} unchanged (already in the container)"),
            (r.dirs, _count(r.dirs, "empty directory").replace("directorys", "directories")),
            (r.symlinks, _count(r.symlinks, "symlink"))) if n]
        if also and r.status in ("migrated", "incomplete", "dry-run"):
            dry = " (dry run: nothing sent)" if r.status == "dry-run" else ""
            out.append(f"{who}also: " + ", ".join(also) + dry)
        if r.mtime_precision == "s":
            out.append(f"{who}mtimes: whole seconds (the container's touch takes no "
                       "nanoseconds and it has no python3)")
        if r.renamed_to:
            out.append(f"renamed  {escape_name(r.source)} → "
                       f"{escape_name(os.path.basename(r.renamed_to))}")
            if r.flushed is False:
                out.append(f"{who}not flushed: the container could not be asked to sync (no "
                           "Exec); renamed as --rename-without-flush said")
        for label, items in (("skipped", [f"{escape_name(s.path)}: {s.reason}"
                                          for s in r.skipped]),
                             ("FAILED ", [f"{escape_name(f.path)}: {escape_name(f.error)}"
                                          for f in r.failures])):
            shown = items if limit is None else items[:limit]
            out += [f"{label}  {who}{item}" for item in shown]
            if len(items) > len(shown):
                out.append(f"{label}  {who}… and {len(items) - len(shown):,} more "
                           "(--json lists them all)")
        if r.error:
            out.append(f"{escape_name(r.source)}: not renamed: {escape_name(r.error)}")
    return out


def print_reports(reports: Sequence[MigrationReport], out: TextIO, *,
                  fleet: bool = False) -> None:
    """Print the summary table (at most :data:`PIPE_WIDTH` wide), then the lines of
    :func:`report_lines` (lists capped on a terminal)."""
    tty = out.isatty()
    console = Console(file=out, highlight=False, soft_wrap=True,
                      width=None if tty else PIPE_WIDTH)
    lines = report_lines(reports, limit=TERMINAL_LIST_LIMIT if tty else None)
    console.print(Group(report_table(reports, fleet=fleet)), width=min(console.width,
                                                                       PIPE_WIDTH))
    for line in lines:
        console.print(line, markup=False)
