"""The server's budget of bytes in flight, waited for on the asyncio loop (see
:mod:`memoh_trio._budget` for the rules), and the share each call holds of it (:class:`Lease`).

Receive windows follow the budget. grpclib acknowledges a stream's data as its handler reads
it, which reopens both the stream's and the connection's window; a call waiting for the budget
would then hold the connection's window with its unread data, and the calls that do hold the
budget would wait for data that can no longer come (32 concurrent 16 MiB WriteFile calls on one
connection hung that way). The server instead does what grpc-go does:

* the connection's window is acknowledged as data arrives (every stream's data is bounded by
  its own window, so the connection never stalls on a waiting call);
* a stream starts with :data:`STREAM_WINDOW` bytes (HTTP/2's default) and gets more only for
  a message that has its share of the budget: the message's length, plus
  :data:`STREAM_WINDOW` to read ahead (the next message's prefix, and all of a small one);
* WriteRaw and Exec's stdin also hold, when it is free, up to ``READ_AHEAD`` (4 MiB) of the
  budget for their next messages and keep the window open that far, so that the client sends
  on while a chunk is written (without it each 1 MiB chunk waited for its WINDOW_UPDATE:
  256 MiB took 3.3-3.7 s instead of 2.1 s, one noisy run each); a call that then sends
  nothing for a while when others wait gives that back.

So a call waiting for the budget holds at most :data:`STREAM_WINDOW` unread bytes, and the
bytes the server holds are at most the budget plus that per open stream.

After a burst (the budget back to nothing in use, with at least :data:`TRIM_AFTER` bytes handed
out since the last time), free heap memory is given back to the system (:mod:`memoh_trio._heap`),
:data:`TRIM_DELAY` later: the calls' last references to their messages (a cancelled call's
stream, its unread data) go only after the budget was given back.
"""

from __future__ import annotations

import asyncio
from collections import deque

from .. import _heap
from .._budget import Budget

#: A stream's receive window before any budget is given to it, and the read-ahead kept open
#: past the message being read (HTTP/2's default initial window).
STREAM_WINDOW = 65535
#: Bytes handed out since the last trim before an idle budget trims the heap (one large
#: message's worth: small calls never pay for it).
TRIM_AFTER = 16 * 1024 * 1024
#: Seconds between the budget going idle (or a connection lost) and the trim.
TRIM_DELAY = 0.5


class InflightBudget:
    """:class:`memoh_trio._budget.Budget` with waiting callers (asyncio futures)."""

    def __init__(self, total: int) -> None:
        self.budget = Budget(total)
        self._futures: dict[int, asyncio.Future[None]] = {}
        self._since_trim = 0
        self._trim_pending: asyncio.TimerHandle | None = None
        #: Heap trims done (for tests and logs).
        self.trims = 0

    async def take(self, n: int) -> int:
        """Wait until ``n`` bytes (at most the whole budget) are free and take them; returns
        what was taken, to give back with :meth:`give_back`."""
        n = self.budget.clamp(n)
        ticket, granted = self.budget.ask(n)
        if not granted:
            future = asyncio.get_running_loop().create_future()
            self._futures[ticket] = future
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self.give_back(n)  # granted, but the caller went away before it woke
                else:
                    self._wake(self.budget.withdraw(ticket))
                raise
            finally:
                self._futures.pop(ticket, None)
        self._since_trim += n
        return n

    def try_take(self, n: int) -> int:
        """Take up to ``n`` bytes of what is free now, unless somebody waits; returns what was
        taken."""
        n = min(self.budget.clamp(n), self.budget.total - self.budget.used)
        if n <= 0 or not self.budget.try_take(n):
            return 0
        self._since_trim += n
        return n

    def give_back(self, n: int) -> None:
        self._wake(self.budget.give_back(n))
        if self.budget.used == 0 and self._since_trim >= TRIM_AFTER:
            self.trim_soon()

    def trim_soon(self) -> None:
        """Trim the heap :data:`TRIM_DELAY` from now (once, however often asked meanwhile)."""
        if self._trim_pending is None:
            self._trim_pending = asyncio.get_running_loop().call_later(TRIM_DELAY, self._trim)

    def _trim(self) -> None:
        self._trim_pending = None
        self._since_trim = 0
        if _heap.trim():
            self.trims += 1

    def close(self) -> None:
        if self._trim_pending is not None:
            self._trim_pending.cancel()
            self._trim_pending = None

    def _wake(self, tickets: list[int]) -> None:
        for ticket in tickets:
            future = self._futures.get(ticket)
            if future is not None and not future.done():
                future.set_result(None)


class Lease:
    """The bytes of the budget one call holds, message by message, oldest first."""

    def __init__(self, budget: InflightBudget) -> None:
        self._budget = budget
        self._held: deque[int] = deque()
        #: Taken for the next message before it was asked for (a streaming call's read-ahead).
        self.ahead = 0
        #: The stream's receive window so far: bytes the peer was allowed to send in all...
        self.window_opened = STREAM_WINDOW
        #: ...and bytes taken off the stream.
        self.consumed = 0

    def window_needed(self, length: int) -> int:
        """Bytes by which to open the stream's window before reading a ``length``-byte body
        (0: open enough), counted as opened. The window is topped up to the body plus
        :data:`STREAM_WINDOW` once less than half of that read-ahead would be left after the
        body (so small messages cost no WINDOW_UPDATE)."""
        end = self.consumed + length
        if self.window_opened - end >= STREAM_WINDOW // 2:
            return 0
        need = end + STREAM_WINDOW - self.window_opened
        self.window_opened += need
        return need

    async def take(self, n: int) -> None:
        """Wait for ``n`` more bytes of the budget (a message about to be read or sent); what
        was taken ahead counts first."""
        from_ahead = min(self.ahead, n)
        self.ahead -= from_ahead
        got = await self._budget.take(n - from_ahead) if n > from_ahead else 0
        self._held.append(from_ahead + got)

    def take_ahead(self, n: int) -> int:
        """Hold ``n`` bytes for the next messages, taking what is missing if it is free now;
        returns what is held ahead."""
        if self.ahead < n:
            self.ahead += self._budget.try_take(n - self.ahead)
        return self.ahead

    def drop_ahead(self) -> None:
        if self.ahead:
            self._budget.give_back(self.ahead)
            self.ahead = 0

    def release_older(self) -> None:
        """Give back all but the newest message's bytes (WriteRaw: the older chunks are
        written)."""
        while len(self._held) > 1:
            self._budget.give_back(self._held.popleft())

    def release_held(self) -> None:
        """Give back the messages' bytes (Exec: its stdin went to the process); what is held
        ahead stays."""
        while self._held:
            self._budget.give_back(self._held.popleft())

    def release_all(self) -> None:
        self.release_held()
        self.drop_ahead()
