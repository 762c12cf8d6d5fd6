"""The server's budget of bytes in flight (pure), and a call's share of it on the asyncio side."""

from __future__ import annotations

import asyncio

import pytest

from memoh_trio._bridge.budget import STREAM_WINDOW, InflightBudget, Lease
from memoh_trio._budget import MIN_BUDGET, Budget

MiB = 1024 * 1024


def test_requests_within_the_budget_are_granted_at_once() -> None:
    b = Budget(64 * MiB)
    assert b.ask(16 * MiB)[1] and b.ask(48 * MiB)[1]
    assert b.used == 64 * MiB
    ticket, granted = b.ask(1)
    assert not granted and b.waiting() == 1
    assert b.give_back(16 * MiB) == [ticket]
    assert b.used == 48 * MiB + 1


def test_first_come_first_served_a_large_request_is_not_overtaken() -> None:
    b = Budget(64 * MiB)
    b.ask(60 * MiB)
    big, _ = b.ask(16 * MiB)
    small, granted = b.ask(1 * MiB)
    assert not granted  # 4 MiB are free, but the 16 MiB request came first
    assert b.give_back(60 * MiB) == [big, small]


def test_withdrawn_head_lets_the_next_through() -> None:
    b = Budget(64 * MiB)
    b.ask(56 * MiB)
    big, _ = b.ask(16 * MiB)
    small, _ = b.ask(4 * MiB)
    assert b.withdraw(big) == [small]
    assert b.peak == 60 * MiB


def test_a_request_larger_than_the_budget_takes_all_of_it() -> None:
    b = Budget(MIN_BUDGET)
    assert b.clamp(16 * MiB) == MIN_BUDGET
    assert b.clamp(-1) == 0


def test_bad_budget_and_bad_give_back_are_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        Budget(MIN_BUDGET - 1)
    b = Budget(MIN_BUDGET)
    with pytest.raises(ValueError, match="giving back"):
        b.give_back(1)


def test_waiters_wake_in_order_and_a_cancelled_waiter_gives_back() -> None:
    async def main() -> None:
        budget = InflightBudget(MIN_BUDGET)
        first = Lease(budget)
        await first.take(MIN_BUDGET)
        second, third = Lease(budget), Lease(budget)
        t2 = asyncio.ensure_future(second.take(MIN_BUDGET))
        t3 = asyncio.ensure_future(third.take(1))
        await asyncio.sleep(0)
        assert not t2.done() and not t3.done()
        first.release_all()  # grants the second; then cancel it before it runs
        t2.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert t3.done()  # the cancelled grant went back and reached the third
        third.release_all()
        assert budget.budget.used == 0
        budget.close()

    asyncio.run(main())


def test_lease_opens_the_stream_window_for_each_message_plus_read_ahead() -> None:
    lease = Lease(InflightBudget(MIN_BUDGET))
    lease.consumed = 5  # a prefix
    assert lease.window_needed(100) == 0  # fits in the initial window with room to spare
    lease.consumed += 100 + 5
    assert lease.window_needed(16 * MiB) == 110 + 16 * MiB
    assert lease.window_opened == lease.consumed + 16 * MiB + STREAM_WINDOW
    assert lease.window_needed(16 * MiB) == 0  # asked twice: opened once
    lease.consumed += 16 * MiB + 5
    assert lease.window_needed(STREAM_WINDOW // 2) == STREAM_WINDOW // 2 + 5


def test_release_older_keeps_the_newest_message() -> None:
    async def main() -> None:
        budget = InflightBudget(MIN_BUDGET)
        lease = Lease(budget)
        await lease.take(100)
        await lease.take(200)
        lease.release_older()
        assert budget.budget.used == 200
        lease.release_all()
        assert budget.budget.used == 0

    asyncio.run(main())


def test_read_ahead_is_taken_only_when_free_and_nobody_waits() -> None:
    b = Budget(64 * MiB)
    assert b.try_take(60 * MiB)
    assert not b.try_take(8 * MiB)  # does not fit
    ticket, granted = b.ask(8 * MiB)
    assert not granted
    assert not b.try_take(1)  # fits, but someone waits: no overtaking
    assert b.withdraw(ticket) == []
    assert b.try_take(1)


def test_lease_read_ahead_counts_first_and_goes_back_with_the_call() -> None:
    async def main() -> None:
        budget = InflightBudget(16 * MiB)
        lease = Lease(budget)
        assert lease.take_ahead(4 * MiB) == 4 * MiB
        await lease.take(1 * MiB)  # from what was held ahead
        assert (lease.ahead, budget.budget.used) == (3 * MiB, 4 * MiB)
        assert lease.take_ahead(4 * MiB) == 4 * MiB  # topped up
        assert budget.budget.used == 5 * MiB
        lease.release_older()  # a single message: kept
        assert budget.budget.used == 5 * MiB
        lease.release_all()
        assert (lease.ahead, budget.budget.used) == (0, 0)
        other = Lease(budget)
        await other.take(14 * MiB)
        assert lease.take_ahead(4 * MiB) == 2 * MiB  # only what is free
        lease.drop_ahead()
        other.release_all()
        budget.close()

    asyncio.run(main())


def test_release_held_keeps_the_read_ahead() -> None:
    async def main() -> None:
        budget = InflightBudget(16 * MiB)
        lease = Lease(budget)
        await lease.take(1 * MiB)
        lease.take_ahead(4 * MiB)
        lease.release_held()  # Exec: the message went to the process
        assert (lease.ahead, budget.budget.used) == (4 * MiB, 4 * MiB)
        lease.release_all()
        assert budget.budget.used == 0
        budget.close()

    asyncio.run(main())
