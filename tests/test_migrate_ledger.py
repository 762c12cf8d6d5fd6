"""memoh_trio._migrate.ledger without sockets: each counting rule moves the report, the progress
observer and ``done``/``required`` together, and the outcome the rename decision reads."""

from __future__ import annotations

import pytest
import trio

from memoh_trio._errors import Unavailable
from memoh_trio._finalize import decide
from memoh_trio._migrate.ledger import Ledger
from memoh_trio._migrate.meta import BatchResult
from memoh_trio._migrate.tar import BatchOutcome
from memoh_trio._plan import Action, Kind
from memoh_trio._progress import Progress
from memoh_trio._report import MigrationReport


def _ledger() -> Ledger:
    return Ledger(MigrationReport(source="/src", dest=""), Progress())


def _a(kind: Kind, rel: str = "a", size: int = 0) -> Action:
    return Action(kind, rel, f"/src/{rel}", size=size,
                  link_target="t" if kind is Kind.SYMLINK else None)


def test_found_counts_what_the_rename_waits_for() -> None:
    ledger = _ledger()
    ledger.found([_a(kind, size=3 if kind is Kind.COPY else 0) for kind in Kind])
    assert ledger.required == 4  # copy, create, mkdir, symlink; not dir, skip, fail
    assert ledger.progress.state.files_total == 2
    assert ledger.progress.state.bytes_total == 3
    ledger.found([_a(Kind.COPY, size=4), _a(Kind.COPY, size=5)])
    assert ledger.required == 6
    assert (ledger.progress.state.files_total, ledger.progress.state.bytes_total) == (4, 12)


def test_predicted_counts_a_dry_run_as_the_real_run() -> None:
    ledger = _ledger()
    ledger.predicted(_a(Kind.COPY, "f", 5), unchanged=False)
    ledger.predicted(_a(Kind.CREATE, "e"), unchanged=False)
    ledger.predicted(_a(Kind.COPY, "same", 7), unchanged=True)
    ledger.predicted(_a(Kind.MKDIR, "d"), unchanged=False)
    ledger.predicted(_a(Kind.SYMLINK, "l"), unchanged=False)
    r = ledger.report
    assert (r.files, r.bytes, r.unchanged, r.dirs, r.symlinks) == (2, 5, 1, 1, 1)
    assert ledger.done == 5


def test_batch_done_links_hash_and_meta() -> None:
    ledger = _ledger()
    a, b, c = _a(Kind.SYMLINK, "a"), _a(Kind.SYMLINK, "b"), _a(Kind.COPY, "c", 4)
    ledger.batch_done(BatchResult("links", done=[a], failed=[(b, "cannot: x")]))
    assert (ledger.done, ledger.report.symlinks) == (1, 1)
    assert [(f.path, f.error) for f in ledger.report.failures] == [("b", "cannot: x")]
    ledger.batch_done(BatchResult("hash", done=[c], resend=[_a(Kind.COPY, "d", 1)]))
    assert (ledger.done, ledger.report.unchanged) == (2, 1)  # resend is the run's, not counted
    ledger.batch_done(BatchResult("meta", done=[c], precision="ns"))
    assert ledger.done == 2  # modes and mtimes are not entries of their own
    assert ledger.report.mtime_precision == "ns"


def test_precision_keeps_the_coarsest() -> None:
    ledger = _ledger()
    assert ledger.report.mtime_precision is None
    ledger.used_precision("ns")
    assert ledger.report.mtime_precision == "ns"
    ledger.used_precision("s")
    ledger.used_precision("ns")
    assert ledger.report.mtime_precision == "s"


@pytest.mark.parametrize("applied", [False, True])
def test_tar_done(applied: bool) -> None:
    ledger = _ledger()
    copied = [_a(Kind.COPY, "x", 2), _a(Kind.COPY, "y", 3)]
    ledger.tar_done(BatchOutcome(copied=copied, failed=[(_a(Kind.COPY, "z", 1), "bad")],
                                 changed=[_a(Kind.COPY, "w", 1)], meta_applied=applied))
    r = ledger.report
    assert (ledger.done, r.files, r.bytes, len(r.failures)) == (2, 2, 5, 1)
    assert r.mtime_precision == ("ns" if applied else None)
    # An empty batch proves no precision.
    ledger = _ledger()
    ledger.tar_done(BatchOutcome(meta_applied=True))
    assert ledger.report.mtime_precision is None


def test_outcome_feeds_the_decision() -> None:
    ledger = _ledger()
    ledger.found([_a(Kind.MKDIR)])
    ledger.walk_complete = True
    assert not decide(ledger.outcome(rename=True, dry_run=False)).rename
    ledger.made_dir()
    assert decide(ledger.outcome(rename=True, dry_run=False)).rename
    assert not decide(ledger.outcome(rename=False, dry_run=False)).rename
    assert decide(ledger.outcome(rename=True, dry_run=True)).status == "dry-run"
    ledger.fail("x", "why")
    assert "1 entry failed" in decide(ledger.outcome(rename=True, dry_run=False)).reason


async def test_lose_keeps_the_first_fatal_error_and_cancels_the_copy() -> None:
    ledger = _ledger()
    first, second = Unavailable("gone", method="Exec"), Unavailable("again", method="Stat")
    with trio.CancelScope() as scope:
        ledger.attach(scope)
        assert ledger.copy_running
        ledger.lose(first)
        ledger.lose(second)
        await trio.sleep(1)
    assert scope.cancelled_caught
    ledger.detach()
    assert not ledger.copy_running and ledger.fatal is first
    assert ledger.outcome(rename=True, dry_run=False).fatal == "gone"


def test_bytes_are_counted_in_the_ledger_only() -> None:
    """An entry's bytes count once sent and stay once it is copied; a failure, a file sent
    again or a held file left unplaced gives them back, so the progress ends at the bytes
    really copied whatever way each file took (no part un-counts anything itself)."""
    ledger = _ledger()
    files = {name: _a(Kind.COPY, name, size) for name, size in
             (("ok", 10), ("bad", 20), ("again", 30), ("changed", 40), ("big", 100),
              ("held", 50))}
    ledger.found(list(files.values()))
    ledger.sent_whole([files[n] for n in ("ok", "bad", "again")])  # a batch ("changed": not read)
    ledger.tar_done(BatchOutcome(copied=[files["ok"]], failed=[(files["bad"], "check")],
                                 resend=[files["again"]], changed=[files["changed"]]))
    assert ledger.progress.state.bytes_done == 10
    for rel in ("again", "changed"):  # the per-file way, chunk by chunk
        ledger.sending(rel, files[rel].size // 2)
        ledger.sending(rel, files[rel].size - files[rel].size // 2)
        ledger.copied(files[rel])
    ledger.sending("big", 60)  # a stream that failed half-way
    ledger.fail(files["big"], "stalled")
    ledger.sending("held", 50)  # held, then the run stopped before it was placed
    ledger.take_back("held")
    ledger.take_back("held")  # twice: nothing more
    assert ledger.progress.state.bytes_done == 10 + 30 + 40
    assert ledger.report.bytes == 10 + 30 + 40
