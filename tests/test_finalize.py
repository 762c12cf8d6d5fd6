"""The rename decision: renamed iff the walk completed, nothing failed/was cancelled, all done."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from memoh_trio._finalize import Outcome, decide

GOOD = Outcome(rename_requested=True, walk_complete=True, cancelled=False, fatal=None,
               required=5, done=5, failures=0)


def test_full_success_renames() -> None:
    d = decide(GOOD)
    assert d.rename
    assert "every entry" in d.reason


def test_each_condition_blocks_the_rename() -> None:
    import dataclasses

    for changes, words in [
        ({"cancelled": True}, "cancelled"),
        ({"fatal": "connection lost"}, "connection lost"),
        ({"walk_complete": False}, "walked"),
        ({"failures": 1}, "1 entry failed"),
        ({"failures": 2}, "2 entries failed"),
        ({"done": 4}, "4 of 5"),
        ({"rename_requested": False}, "not requested"),
    ]:
        d = decide(dataclasses.replace(GOOD, **changes))  # type: ignore[arg-type]
        assert not d.rename, changes
        assert words in d.reason, (changes, d.reason)


def test_empty_tree_renames() -> None:
    import dataclasses

    assert decide(dataclasses.replace(GOOD, required=0, done=0)).rename


@given(
    st.booleans(), st.booleans(), st.booleans(), st.none() | st.text(min_size=1),
    st.integers(0, 5), st.integers(0, 5), st.integers(0, 3),
)
def test_decision_is_the_conjunction(requested: bool, walked: bool, cancelled: bool,
                                     fatal: str | None, required: int, done: int,
                                     failures: int) -> None:
    o = Outcome(requested, walked, cancelled, fatal, required, done, failures)
    expected = (requested and walked and not cancelled and fatal is None and failures == 0
                and done == required)
    d = decide(o)
    assert d.rename == expected
    assert d.reason


@given(st.booleans(), st.booleans(), st.booleans(), st.booleans(), st.integers(0, 3))
def test_status_follows_the_decision(requested: bool, dry_run: bool, walked: bool,
                                     cancelled: bool, failures: int) -> None:
    o = Outcome(requested and not dry_run, walked, cancelled, None, 2, 2, failures,
                dry_run=dry_run)
    d = decide(o)
    clean = walked and not cancelled and failures == 0
    if not clean:
        assert d.status == "incomplete" and not d.rename
    elif dry_run:
        assert d.status == "dry-run" and not d.rename
    else:
        assert d.status == "migrated" and d.rename == requested


def test_stopped_error_keeps_the_class_and_method_and_says_how_far() -> None:
    from memoh_trio._errors import Unauthenticated, Unavailable
    from memoh_trio._finalize import stopped_error

    exc = stopped_error(Unavailable("reset", method="WriteRaw"), "connection reset", files=3,
                        failures=1, source="/data/bots/a")
    assert type(exc) is Unavailable and exc.method == "WriteRaw"
    assert exc.message == ("lost the connection to the container (connection reset); stopped: "
                           "3 files copied, 1 failed, source /data/bots/a kept (not renamed)")
    exc = stopped_error(Unauthenticated("bad token", method="Exec"), "bad token", files=0,
                        failures=0, source="/s")
    assert type(exc) is Unauthenticated
    assert exc.message.startswith("the container refused our credentials (bad token); ")
