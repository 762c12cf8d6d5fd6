"""Progress of a migration, observable by the CLI (or anyone) without polling.

The migrator updates one :class:`Progress`; observers wait on its ``value``, a
``trio_util.AsyncValue`` holding an immutable :class:`ProgressState`::

    progress = Progress()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(draw, progress)
        report = await migrate(src, client, progress=progress)

    async def draw(progress):
        async for state in progress.value.eventual_values():
            bar.update(completed=state.bytes_done, total=state.bytes_total)

Totals grow while the walk is still running (``scanning`` is true); they are final once it is
false. The walk runs well ahead of the copy, so totals settle early.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from trio_util import AsyncValue


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
    """

    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    failures: int = 0
    scanning: bool = True
    finished: bool = False


class Progress:
    """Mutable progress holder; ``value`` is the observable ``AsyncValue[ProgressState]``."""

    def __init__(self) -> None:
        self.value: AsyncValue[ProgressState] = AsyncValue(ProgressState())

    @property
    def state(self) -> ProgressState:
        """The current snapshot."""
        state: ProgressState = self.value.value
        return state

    def _update(self, **changes: int | bool) -> None:
        self.value.value = dataclasses.replace(self.state, **changes)  # type: ignore[arg-type]

    def found(self, files: int, nbytes: int) -> None:
        """The walk found ``files`` more files holding ``nbytes`` bytes."""
        s = self.state
        self._update(files_total=s.files_total + files, bytes_total=s.bytes_total + nbytes)

    def sent(self, nbytes: int) -> None:
        """``nbytes`` more bytes were handed to the transport."""
        self._update(bytes_done=self.state.bytes_done + nbytes)

    def unsent(self, nbytes: int) -> None:
        """A file failed after ``nbytes`` of it were counted: take them back out."""
        self._update(bytes_done=self.state.bytes_done - nbytes)

    def file_done(self, nbytes_not_streamed: int = 0) -> None:
        """One file finished; ``nbytes_not_streamed`` counts bytes not sent (resume's unchanged)."""
        s = self.state
        self._update(files_done=s.files_done + 1, bytes_done=s.bytes_done + nbytes_not_streamed)

    def failed(self) -> None:
        """One entry failed."""
        self._update(failures=self.state.failures + 1)

    def scan_finished(self) -> None:
        """The walk is over: totals are final."""
        self._update(scanning=False)

    def finish(self) -> None:
        """The migration is over."""
        self._update(scanning=False, finished=True)
