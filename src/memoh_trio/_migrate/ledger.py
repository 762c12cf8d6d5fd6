"""The ledger of one migration: its counts, failures and fatal error (the report being filled in).

The parts of a run (:mod:`.stream`, :mod:`.tar`, :mod:`.meta`, :mod:`.agentsteps`) return what
happened; the run records it here, and :func:`memoh_trio._finalize.decide` rules on the counts.
Each method is one counting rule, so the report, the progress observer and ``done``/``required``
move together. Bytes too are counted only here: a part says what went out (:meth:`sending`,
:meth:`sent_whole`), and the outcome recorded for the entry settles them: kept once it is
copied, given back once it fails or goes to be sent again (:meth:`take_back`); no part
un-counts anything itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from .._errors import RPCError
from .._finalize import Outcome
from .._plan import REQUIRED_KINDS, Action, Kind, display_path
from .._progress import Progress
from .._report import Failure, MigrationReport, Skipped
from .._scripts import Precision
from .outcomes import BatchOutcome, BatchResult, plain


class Ledger:
    """The counts, failures and fatal error of one run: the only state its parts share.

    Attributes:
        report: the report being filled in.
        progress: the observer the CLI draws from.
        required: entries whose completion the rename waits for.
        done: those completed and verified.
        walk_complete: the walk reached its end.
        fatal: the first fatal error, which cancelled the copy.
        cancelled: a cancellation reached the copy.
    """

    def __init__(self, report: MigrationReport, progress: Progress) -> None:
        self.report = report
        self.progress = progress
        self.required = 0
        self.done = 0
        self.walk_complete = False
        self.fatal: RPCError | None = None
        self.cancelled = False
        self._scope: trio.CancelScope | None = None
        #: bytes counted as sent for entries not settled yet (streaming, held, in a batch)
        self._sent: dict[str, int] = {}

    # -- bytes: counted here only. An entry's bytes count once sent; it keeps them once it is
    # copied, and gives them back when it fails or goes to be sent again.

    def sending(self, rel: str, nbytes: int) -> None:
        """``nbytes`` more of ``rel`` went out (a stream's chunk)."""
        self._sent[rel] = self._sent.get(rel, 0) + nbytes
        self.progress.sent(nbytes)

    def sent_whole(self, actions: Sequence[Action]) -> None:
        """The files of a batch went out whole (one progress update for all)."""
        total = 0
        for action in actions:
            self._sent[action.rel] = self._sent.get(action.rel, 0) + action.size
            total += action.size
        if total:
            self.progress.sent(total)

    def take_back(self, rel: str) -> None:
        """``rel`` failed, goes to be sent again, or was left unplaced: its bytes no longer
        count."""
        nbytes = self._sent.pop(rel, 0)
        if nbytes:
            self.progress.unsent(nbytes)

    def _settled(self, rel: str) -> None:
        self._sent.pop(rel, None)

    def found(self, actions: Sequence[Action]) -> None:
        """Count entries the walk found (the rename waits for those that need work); the
        progress totals grow once for all of them (once per walk batch, not per file)."""
        files = nbytes = 0
        for action in actions:
            kind = action.kind
            if kind in REQUIRED_KINDS:
                self.required += 1
            if kind is Kind.COPY or kind is Kind.CREATE:
                files += 1
                nbytes += action.size
        if files:
            self.progress.found(files, nbytes)

    def fail(self, action_or_rel: Action | str, error: str) -> None:
        """Record one entry's failure."""
        rel = action_or_rel.rel if isinstance(action_or_rel, Action) else action_or_rel
        self.take_back(rel)
        self.report.failures.append(Failure(display_path(rel) or ".", error))
        self.progress.failed()

    def fail_all(self, failed: list[tuple[Action, str]]) -> None:
        """Record the failures of a batch, each with its reason."""
        for action, error in failed:
            self.fail(action, error)

    def skipped(self, action: Action) -> None:
        """Record an entry that is not copied on purpose (a FIFO, a socket, a device)."""
        self.report.skipped.append(Skipped(display_path(action.rel), action.reason))

    def copied(self, action: Action) -> None:
        """Record one regular file copied and verified."""
        self._settled(action.rel)
        self.done += 1
        self.report.files += 1
        self.report.bytes += action.size
        self.progress.file_done()

    def copied_many(self, actions: list[Action]) -> None:
        """Record regular files copied and verified (one progress update for all: a batch of
        1,000 small files made 1,000 snapshots)."""
        if not actions:
            return
        for action in actions:
            self._settled(action.rel)
        self.done += len(actions)
        self.report.files += len(actions)
        self.report.bytes += sum(a.size for a in actions)
        self.progress.file_done(files=len(actions))

    def made_dir(self) -> None:
        """Record one (empty) directory created."""
        self.report.dirs += 1
        self.done += 1

    def linked(self, n: int) -> None:
        """Record ``n`` symlinks recreated."""
        self.done += n
        self.report.symlinks += n

    def unchanged(self, action: Action) -> None:
        """Record a file the destination already has (resume: not sent)."""
        self.done += 1
        self.report.unchanged += 1
        self.progress.file_done(action.size)

    def predicted(self, action: Action, *, unchanged: bool) -> None:
        """Dry run: count an entry as the real run would."""
        self.done += 1
        if unchanged:
            self.report.unchanged += 1
        elif action.kind in (Kind.COPY, Kind.CREATE):
            self.report.files += 1
            self.report.bytes += action.size
        elif action.kind is Kind.MKDIR:
            self.report.dirs += 1
        elif action.kind is Kind.SYMLINK:
            self.report.symlinks += 1

    def used_precision(self, precision: Precision) -> None:
        """Mtimes were applied to this precision: the report keeps the coarsest used."""
        if self.report.mtime_precision != "s":
            self.report.mtime_precision = precision

    def tar_done(self, outcome: BatchOutcome) -> None:
        """Record what a tar batch copied and failed (its changed files, and those no record
        vouched for, go the per-file way: their bytes are counted again when sent)."""
        self.fail_all(outcome.failed)
        self.copied_many(outcome.copied)
        for action in (*outcome.changed, *outcome.resend):
            self.take_back(action.rel)
        if outcome.meta_applied and outcome.copied:
            self.used_precision("ns")  # the python3 mover applied them, each record proves it

    def batch_done(self, result: BatchResult) -> None:
        """Record what a batched Exec did (its files to send again are the run's)."""
        self.fail_all(result.failed)
        if result.job == "links":
            self.linked(len(result.done))
        elif result.job == "hash":
            for action in result.done:
                self.unchanged(action)
        if result.precision is not None:
            self.used_precision(result.precision)

    def outcome(self, *, rename: bool, dry_run: bool) -> Outcome:
        """What :func:`memoh_trio._finalize.decide` rules on."""
        return Outcome(
            rename_requested=rename and not dry_run,
            dry_run=dry_run,
            walk_complete=self.walk_complete,
            cancelled=self.cancelled,
            fatal=None if self.fatal is None else plain(self.fatal),
            required=self.required,
            done=self.done,
            failures=len(self.report.failures),
        )

    def attach(self, scope: trio.CancelScope) -> None:
        """From now on :meth:`lose` cancels ``scope`` (the copy nursery's)."""
        self._scope = scope

    def detach(self) -> None:
        """The copy nursery has exited."""
        self._scope = None

    @property
    def copy_running(self) -> bool:
        return self._scope is not None

    def lose(self, exc: RPCError) -> None:
        """A fatal error: remember the first and cancel the remaining copy work."""
        if self.fatal is None:
            self.fatal = exc
        if self._scope is not None:
            self._scope.cancel()
