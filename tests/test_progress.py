"""Progress counts (pure, no I/O): every operation changes only its own fields, also in a fleet."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from memoh_trio._progress import Progress, bot_done, bot_progress, start_fleet

OPS = st.lists(st.tuples(st.sampled_from(["found", "sent", "unsent", "file_done", "failed"]),
                         st.integers(0, 5), st.integers(0, 10**9)), max_size=40)


@given(OPS)
def test_counts_follow_the_operations(ops: list[tuple[str, int, int]]) -> None:
    fleet = Progress()
    start_fleet(fleet, 2)
    bot = bot_progress(fleet)
    want = dict(files_done=0, files_total=0, bytes_done=0, bytes_total=0, failures=0)
    for op, n, size in ops:
        if op == "found":
            bot.found(n, size)
            want["files_total"] += n
            want["bytes_total"] += size
        elif op == "sent":
            bot.sent(size)
            want["bytes_done"] += size
        elif op == "unsent":
            bot.unsent(size)
            want["bytes_done"] -= size
        elif op == "file_done":
            bot.file_done(size, files=n)
            want["files_done"] += n
            want["bytes_done"] += size
        else:
            bot.failed()
            want["failures"] += 1
    for p in (bot, fleet):
        state = p.state
        assert {k: getattr(state, k) for k in want} == want
    assert (bot.state.scanning, bot.state.finished, bot.state.bots_total) == (True, False, 0)
    assert (fleet.state.scanning, fleet.state.bots_total, fleet.state.bots_done) == (True, 2, 0)
    bot.finish()
    bot_done(fleet)
    assert bot.state.finished and not bot.state.scanning
    assert fleet.state.bots_done == 1 and fleet.state.scanning  # one bot's walk still to come
    assert {k: getattr(fleet.state, k) for k in want} == want
