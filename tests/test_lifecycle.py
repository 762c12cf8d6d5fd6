"""The per-file lifecycle table (:mod:`memoh_trio._migrate.lifecycle`), without I/O: the phase
after each event, a rejected step changing nothing, the decisions from what is known, records
to events, the flow of held files; and that every row of the table has an end-to-end test
against Memoh's Go server (``test_lifecycle_paths.py``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from memoh_trio._migrate import lifecycle
from memoh_trio._migrate.lifecycle import (
    FINAL,
    TABLE,
    Event,
    Flow,
    Known,
    LifecycleError,
    Phase,
    Python,
    advance,
)
from memoh_trio._scripts import CHECK_FAILED, MOVE_FAILED, NO_RECORD, SHELL_META_MAX

HERE = Path(__file__).parent


def test_every_row_leads_somewhere_and_final_phases_are_final() -> None:
    for (phase, event), new in TABLE.items():
        assert phase not in FINAL
        assert advance(phase, event) is new
    # every phase but the final ones has a way out, and can be reached (or starts a life)
    starts = {Phase.TAR, Phase.STREAM, Phase.HASH, Phase.UNCHANGED, Phase.LINK, Phase.MKDIR}
    reached = set(TABLE.values()) | starts
    assert reached == set(Phase)
    assert {p for p, _ in TABLE} == set(Phase) - FINAL


def test_a_rejected_step_changes_nothing() -> None:
    before = dict(TABLE)
    for phase in Phase:
        for event in Event:
            if (phase, event) in TABLE:
                continue
            with pytest.raises(LifecycleError, match=f"no step from {phase.name} on"):
                advance(phase, event)
    assert dict(TABLE) == before


def test_no_file_is_sent_more_than_twice() -> None:
    """Walk every path through the table: a file's bytes go out (a tar batch that read it, a
    stream) at most twice, and every path ends DONE or FAILED (no cycle)."""

    def sends(phase: Phase, event: Event) -> bool:
        return (phase is Phase.TAR and event is not Event.CHANGED) or event is Event.SENT

    def walk(phase: Phase, sent: int, seen: tuple[Phase, ...]) -> None:
        assert phase not in seen, f"cycle: {(*seen, phase)}"
        assert sent <= 2, (*seen, phase)
        if phase in FINAL:
            return
        for (p, event), new in TABLE.items():
            if p is phase:
                walk(new, sent + sends(p, event), (*seen, phase))

    for start in (Phase.TAR, Phase.STREAM, Phase.HASH, Phase.UNCHANGED):
        walk(start, 0, ())


@pytest.mark.parametrize(("path", "end"), [
    # tar + python3 mover: done with modes and mtimes
    ([(Phase.TAR, Event.OK_META)], Phase.DONE),
    # tar + listing + mv, then modes and mtimes (python3 crashed: the shell's way)
    ([(Phase.TAR, Event.OK), (Phase.MOVED, Event.META_DUE), (Phase.META, Event.PY_LOST),
      (Phase.META_SHELL, Event.OK)], Phase.DONE),
    # a tar batch that failed: sent again, checked and renamed, never held
    ([(Phase.TAR, Event.LOST), (Phase.RESEND, Event.SENT), (Phase.CHECK, Event.OK),
      (Phase.MOVED, Event.NO_META)], Phase.DONE),
    # streamed, held, python3 crashed: Stat finds the temporary file gone, sent again
    ([(Phase.STREAM, Event.SENT), (Phase.SENT, Event.HOLD), (Phase.HELD, Event.PY_LOST),
      (Phase.RECHECK, Event.GONE), (Phase.RESEND, Event.SENT), (Phase.CHECK, Event.OK)],
     Phase.MOVED),
    # resume with sha256: the container's copy differs: sent
    ([(Phase.HASH, Event.LOST), (Phase.STREAM, Event.SENT), (Phase.SENT, Event.CHECK),
      (Phase.CHECK, Event.BAD)], Phase.FAILED),
    # a symlink python3 did not vouch for: the shell makes it
    ([(Phase.LINK, Event.PY_LOST), (Phase.LINK_SHELL, Event.OK)], Phase.DONE),
])
def test_state_after_each_event(path: list[tuple[Phase, Event]], end: Phase) -> None:
    phase = path[0][0]
    for expected, event in path:
        assert phase is expected
        phase = advance(phase, event)
    assert phase is end


def test_counts_as() -> None:
    assert lifecycle.counts_as(Phase.TAR, Phase.DONE) == "copied"
    assert lifecycle.counts_as(Phase.HELD, Phase.DONE) == "copied"
    assert lifecycle.counts_as(Phase.CHECK, Phase.MOVED) == "copied"
    assert lifecycle.counts_as(Phase.HASH, Phase.UNCHANGED) == "unchanged"
    assert lifecycle.counts_as(Phase.META, Phase.FAILED) == "failed"
    assert lifecycle.counts_as(Phase.META, Phase.DONE) is None  # counted when it moved
    assert lifecycle.counts_as(Phase.LINK, Phase.DONE) is None


# ------------------------------------------------------------------ decisions


@pytest.mark.parametrize(("known", "event"), [
    (Known(exec=True, python=Python.UNKNOWN), Event.HOLD),
    (Known(exec=True, python=Python.YES), Event.HOLD),
    (Known(exec=True, python=Python.NO), Event.CHECK),
    (Known(exec=True, python=Python.LOST), Event.CHECK),
    (Known(exec=False, python=Python.UNKNOWN), Event.CHECK),  # no Exec: nobody places it
    (Known(exec=True, python=Python.YES, verify="sha256"), Event.CHECK),
])
def test_after_sent(known: Known, event: Event) -> None:
    assert lifecycle.after_sent(known) is event


def test_knowledge_learned() -> None:
    k = Known(exec=True)
    assert k.python_answered(True).python is Python.YES
    assert k.python_answered(False).python is Python.NO
    lost = k.python_answered(True).python_lost()
    assert lost.python is Python.LOST and not lost.python_usable
    assert lost.python_answered(True) is lost  # a lost python3 stays lost
    assert k is not lost and k.python is Python.UNKNOWN  # frozen: learning makes a new one


def test_placement_and_movers_from_counts() -> None:
    yes = Known(exec=True, python=Python.YES)
    n = SHELL_META_MAX
    assert not lifecycle.python_wanted(n, n, n)
    assert lifecycle.python_wanted(n + 1, 0, 0)
    assert lifecycle.python_wanted(1, n + 1, 0)  # python3 asked for the tar batches anyway
    assert lifecycle.python_wanted(1, 0, n + 1)
    assert lifecycle.python_places(yes, True)
    assert not lifecycle.python_places(yes, False)
    assert not lifecycle.python_places(yes.python_lost(), True)
    assert lifecycle.tar_mover(yes, n + 1) == "python"
    assert lifecycle.tar_mover(yes, n) == "shell"
    assert lifecycle.tar_mover(yes.python_lost(), n + 1) == "shell"
    assert lifecycle.meta_done_event(yes) is Event.META_DUE
    assert lifecycle.meta_done_event(Known(preserve=False)) is Event.NO_META


def test_events_of_records() -> None:
    records = {0: None, 1: f"{CHECK_FAILED}: expected 3, found 2", 2: "a directory is in the way",
               3: NO_RECORD, 4: MOVE_FAILED}
    assert lifecycle.events_of(records, 0, 6, python=False) == [
        Event.OK, Event.BAD, Event.REFUSED, Event.LOST, Event.LOST, Event.LOST]
    # Exit code not 0: the O record is not believed; the F records are.
    assert lifecycle.events_of(records, 1, 5, python=True) == [
        Event.PY_LOST, Event.BAD, Event.REFUSED, Event.PY_LOST, Event.PY_LOST]
    assert lifecycle.step_failed(2, python=True) == [Event.PY_LOST] * 2
    assert lifecycle.python_failed({0: None}, 0) is False
    assert lifecycle.python_failed({0: None}, 137) is True
    assert lifecycle.python_failed({0: None, 1: NO_RECORD}, 0) is True  # output cut
    assert lifecycle.python_failed({0: MOVE_FAILED}, 0) is False  # a record, not a crash


def test_flow_counts_every_stream_and_places_the_rest_once_all_are_routed() -> None:
    flow: Flow[str] = Flow(batch_size=3)
    flow.stream_started()  # a stream of the walk
    assert flow.hold("a") is None
    flow.stream_ended()
    assert not flow.rest_due()  # not everything routed yet
    flow.routed_all = True
    # A tar batch that fell back after the walk: its files stream too (5306aab counted them
    # out but never in: the count went negative and the rest was never placed early).
    for name in ("b", "c"):
        flow.stream_started()
        assert not flow.rest_due()
        held = flow.hold(name)
        flow.stream_ended()
    assert held == ["a", "b", "c"]  # full: placed as one batch
    assert not flow.rest_due()
    flow.stream_started()
    flow.hold("d")
    assert not flow.rest_due()
    flow.stream_ended()
    assert flow.streams == 0 and flow.rest_due()
    assert flow.take() == ["d"] and not flow.rest_due()
    assert flow.held_total == 4
    with pytest.raises(LifecycleError):
        flow.stream_ended()  # never below zero
    assert flow.streams == 0


def test_flow_asks_python_at_the_tar_file_past_the_shells_share() -> None:
    flow: Flow[str] = Flow(batch_size=32)
    asks = [flow.routed_to_tar() for _ in range(SHELL_META_MAX + 3)]
    assert asks.index(True) == SHELL_META_MAX and asks.count(True) == 1


def test_tracing_is_off_unless_asked() -> None:
    lifecycle.note("x", lifecycle.Step.STREAM)  # nothing to record into: no error
    assert lifecycle.step("x", Phase.TAR, Event.OK) is Phase.MOVED
    with lifecycle.tracing() as trace:
        lifecycle.note(["a", "b"], lifecycle.Step.TAR_SHELL)
        lifecycle.step(["a", "b"], Phase.TAR, Event.OK)
        lifecycle.note("a", lifecycle.Step.META_SHELL)
        with pytest.raises(LifecycleError):
            lifecycle.step("a", Phase.DONE, Event.OK)
    lifecycle.note("a", lifecycle.Step.STREAM)
    assert trace.steps == {"a": [lifecycle.Step.TAR_SHELL, lifecycle.Step.META_SHELL],
                           "b": [lifecycle.Step.TAR_SHELL]}
    assert trace.rows == {"a": [(Phase.TAR, Event.OK)], "b": [(Phase.TAR, Event.OK)]}
    assert trace.rows_taken() == {(Phase.TAR, Event.OK)}


# ------------------------------------------------------------------ rows tested end to end


def _row_tests() -> dict[tuple[Phase, Event], list[str]]:
    """``ROWS`` of test_lifecycle_paths.py: the rows each of its tests proves, read from its
    source (each test asserts, from its run's trace, that its rows were taken)."""
    tree = ast.parse((HERE / "test_lifecycle_paths.py").read_text())
    rows: dict[tuple[Phase, Event], list[str]] = {}
    decorators: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef):
            decorators[node.name] = " ".join(ast.unparse(d) for d in node.decorator_list)
    from test_lifecycle_paths import KINDS, ROWS, ROWS_BUSYBOX, ROWS_PYTHON

    assert set(KINDS) == {"busybox-python", "busybox"}
    for table in (ROWS, ROWS_PYTHON, ROWS_BUSYBOX):
        for name, covered in table.items():
            assert name in decorators, f"ROWS names {name}, which is not a test there"
            assert "memoh_go" in decorators[name] and "KINDS" in decorators[name], (
                f"{name}: not run against Memoh's Go server under both container kinds")
            for row in covered:
                assert row in TABLE, f"{name} names {row}, which is not a row of the table"
                rows.setdefault(row, []).append(name)
    return rows


def test_every_row_has_an_end_to_end_test() -> None:
    """Each (phase, event) row of the table is proven by a test of test_lifecycle_paths.py
    that runs against Memoh's Go server under run-in.sh busybox-python and busybox, and
    asserts from its run's trace that its files took that row."""
    covered = _row_tests()
    missing = sorted(f"{p.name} --{e.name}-> {TABLE[p, e].name}" for p, e in TABLE
                     if (p, e) not in covered)
    assert missing == [], f"rows without an end-to-end test: {missing}"
