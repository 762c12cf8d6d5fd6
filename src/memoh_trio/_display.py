"""Terminal output of the CLI: rich progress bars fed by a :class:`Progress`, and report tables.

Only the CLI uses this module; the library never prints.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from typing import TextIO

import trio
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table

from ._progress import Progress, ProgressState
from ._report import MigrationReport
from ._units import format_size


@contextlib.asynccontextmanager
async def live_progress(
    progress: Progress, *, console: Console | None = None
) -> AsyncIterator[None]:
    """Show files and bytes done/total, throughput and ETA on stderr while the block runs."""
    console = console or Console(stderr=True)
    bars = RichProgress(
        TextColumn("{task.description:>5}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("•"),
        DownloadColumn(binary_units=True),
        TextColumn("•"),
        TransferSpeedColumn(),
        TextColumn("• ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        refresh_per_second=8,
    )
    files = bars.add_task("files", total=None)
    data = bars.add_task("bytes", total=None)

    def draw(state: ProgressState) -> None:
        total_files = None if state.scanning and state.files_total == 0 else state.files_total
        bars.update(files, completed=state.files_done, total=total_files)
        bars.update(data, completed=state.bytes_done, total=state.bytes_total or None)

    with bars:
        async with trio.open_nursery() as nursery:

            async def follow() -> None:
                async for state in progress.value.eventual_values():
                    draw(state)
                    await trio.sleep(1 / 16)  # rich redraws at 8 Hz; no need to wake more often

            nursery.start_soon(follow)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()
        draw(progress.state)


def print_reports(reports: Sequence[MigrationReport], out: TextIO) -> None:
    """Print a summary table, then every failure and skipped entry with its reason."""
    console = Console(file=out, highlight=False, soft_wrap=True,
                      width=None if out.isatty() else 120)
    table = Table(title="memoh-trio migration", show_lines=False)
    for name, justify in [
        ("source", "left"), ("status", "left"), ("files", "right"), ("bytes", "right"),
        ("dirs", "right"), ("links", "right"), ("unchanged", "right"), ("skipped", "right"),
        ("failed", "right"), ("seconds", "right"), ("MiB/s", "right"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in reports:
        rate = r.bytes / r.seconds / 2**20 if r.seconds > 0 else 0.0
        table.add_row(
            os.path.basename(r.source.rstrip("/")) or r.source, r.status, str(r.files),
            format_size(r.bytes), str(r.dirs), str(r.symlinks),
            str(r.unchanged), str(len(r.skipped)), str(len(r.failures)), f"{r.seconds:.2f}",
            f"{rate:.1f}",
        )
    console.print(table)
    for r in reports:
        if r.renamed_to:
            console.print(f"{r.source} → renamed to {r.renamed_to}", markup=False)
        for s in r.skipped:
            console.print(f"skipped  {s.path}: {s.reason}", markup=False)
        for f in r.failures:
            console.print(f"FAILED   {f.path}: {f.error}", markup=False)
        if r.error:
            console.print(f"{r.source}: not renamed: {r.error}", markup=False)
