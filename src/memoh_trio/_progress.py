"""Progress of a migration, observable by the CLI (or anyone) without polling.

The migrator updates one :class:`Progress`; observers iterate over :meth:`Progress.changes`
(immutable :class:`ProgressState` snapshots) or wait for a condition with :meth:`Progress.wait`::

    progress = Progress()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(draw, progress)
        report = await migrate(src, client, progress=progress)

    async def draw(progress):
        async for state in progress.changes():
            bar.update(completed=state.bytes_done, total=state.bytes_total)

Totals grow while the walk is still running (``scanning`` is true); they are final once it is
false. The walk runs well ahead of the copy, so totals settle early. Given to
:func:`memoh_trio.migrate_all`, one Progress counts the whole fleet: every bot's files and bytes,
plus ``bots_done``/``bots_total``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trio_util import AsyncValue

if TYPE_CHECKING:
    from ._report import MigrationReport


@dataclass(frozen=True)
class ProgressState:
    """A snapshot of a migration's progress.

    Attributes:
        files_done: files finished (copied, created or found unchanged).
        files_total: files found so far.
        bytes_done: bytes sent so far (partial files included).
        bytes_total: bytes of the files found so far.
        failures: entries failed so far.
        scanning: the walk is still running, so the totals may still grow.
        finished: the migration is over (successfully or not).
        bots_done: :func:`memoh_trio.migrate_all` only: bots finished.
        bots_total: :func:`memoh_trio.migrate_all` only: bots to migrate (0 otherwise).
    """

    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    failures: int = 0
    scanning: bool = True
    finished: bool = False
    bots_done: int = 0
    bots_total: int = 0


class Progress:
    """Mutable progress holder, updated by the migrator and observed by anyone.

    Attributes:
        value: the observable state, a ``trio_util.AsyncValue[ProgressState]`` (``.value`` is
            the snapshot, ``eventual_values()``/``wait_value()`` wait on it). Prefer
            :attr:`state`, :meth:`changes` and :meth:`wait`, which keep trio-util out of your
            code.
    """

    def __init__(self) -> None:
        self.value: AsyncValue[ProgressState] = AsyncValue(ProgressState())
        self._parent: Progress | None = None
        self._unscanned = 0  # fleet: bots whose walk is not over yet
        self._scan_reported = False
        self._report: MigrationReport | None = None  # the run's report, as it is filled in
        self._children: list[Progress] = []  # fleet: one per bot started

    @property
    def state(self) -> ProgressState:
        """The current snapshot."""
        state: ProgressState = self.value.value
        return state

    async def changes(self) -> AsyncIterator[ProgressState]:
        """The current state, then each later one (states set while the consumer is busy are
        coalesced: it always gets the newest). Ends never: stop iterating when done."""
        async for state in self.value.eventual_values():
            yield state

    async def wait(self, predicate: Callable[[ProgressState], bool]) -> ProgressState:
        """Wait until ``predicate(state)`` is true; return that state."""
        state: ProgressState = await self.value.wait_value(predicate)
        return state

    def _update(self, **changes: int | bool) -> None:
        self.value.value = dataclasses.replace(self.state, **changes)  # type: ignore[arg-type]

    def _add(self, files_done: int = 0, files_total: int = 0, bytes_done: int = 0,
             bytes_total: int = 0, failures: int = 0) -> None:
        # Once or twice per file: built field by field (0.7 us), not with dataclasses.replace
        # and a dict of deltas (2.8 us per call).
        s = self.state
        self.value.value = ProgressState(
            files_done=s.files_done + files_done, files_total=s.files_total + files_total,
            bytes_done=s.bytes_done + bytes_done, bytes_total=s.bytes_total + bytes_total,
            failures=s.failures + failures, scanning=s.scanning, finished=s.finished,
            bots_done=s.bots_done, bots_total=s.bots_total)
        if self._parent is not None:
            self._parent._add(files_done, files_total, bytes_done, bytes_total, failures)

    def found(self, files: int, nbytes: int) -> None:
        """The walk found ``files`` more files holding ``nbytes`` bytes."""
        self._add(files_total=files, bytes_total=nbytes)

    def sent(self, nbytes: int) -> None:
        """``nbytes`` more bytes were handed to the transport."""
        self._add(bytes_done=nbytes)

    def unsent(self, nbytes: int) -> None:
        """A file failed after ``nbytes`` of it were counted: take them back out."""
        self._add(bytes_done=-nbytes)

    def file_done(self, nbytes_not_streamed: int = 0, files: int = 1) -> None:
        """One file finished (or ``files``); ``nbytes_not_streamed`` counts bytes not sent
        (resume's unchanged)."""
        self._add(files_done=files, bytes_done=nbytes_not_streamed)

    def failed(self) -> None:
        """One entry failed."""
        self._add(failures=1)

    def scan_finished(self) -> None:
        """The walk is over: totals are final."""
        self._update(scanning=False)
        self._report_scanned()

    def finish(self) -> None:
        """The migration is over."""
        self._update(scanning=False, finished=True)
        self._report_scanned()

    # --- the fleet (migrate_all): one child per bot, adding into this one

    def _report_scanned(self) -> None:
        if self._parent is not None and not self._scan_reported:
            self._scan_reported = True
            self._parent._child_scanned()

    def _child_scanned(self) -> None:
        self._unscanned -= 1
        if self._unscanned <= 0:
            self._update(scanning=False)

    def _start_fleet(self, bots: int) -> None:
        self._unscanned = bots
        self._update(bots_total=bots, scanning=bots > 0)

    def _bot(self) -> Progress:
        """A progress for one bot of the fleet: its counts add into this one."""
        child = Progress()
        child._parent = self
        self._children.append(child)
        return child

    def _bot_done(self) -> None:
        self._update(bots_done=self.state.bots_done + 1)


# --- the fleet's side, for memoh_trio._migrate.bots (not methods: Progress's public surface is
# what an observer uses)


def start_fleet(fleet: Progress, bots: int) -> None:
    """``fleet`` counts ``bots`` bots from now on (migrate_all, before the first one starts)."""
    fleet._start_fleet(bots)


def bot_progress(fleet: Progress) -> Progress:
    """A progress for one bot of ``fleet``: its counts add into the fleet's."""
    return fleet._bot()


def bot_done(fleet: Progress) -> None:
    """One more bot of ``fleet`` finished (whatever its outcome)."""
    fleet._bot_done()


# --- what was done so far, for a report of a run that is stopped (memoh_trio._migrate)


def watch_report(progress: Progress, report: MigrationReport) -> None:
    """``report`` is the one the run counted by ``progress`` fills in (its ledger's): a run
    stopped before it returns is reported from it (:func:`live_reports`)."""
    progress._report = report


def live_reports(progress: Progress) -> list[MigrationReport]:
    """The reports of the runs counted by ``progress`` (a fleet: every bot started), as they
    stand now: what they confirmed copied, unchanged and failed."""
    found = [progress._report] if progress._report is not None else []
    for child in progress._children:
        found += live_reports(child)
    return found
