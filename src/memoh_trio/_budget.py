"""The server's budget of message bytes in flight, across all calls and connections. No I/O.

A request message is taken off its HTTP/2 stream only once its length (from the 5-byte gRPC
prefix) fits in the budget; until then the call waits and reads nothing more, so the stream's
and the connection's flow-control windows stay closed and the client waits too, as HTTP/2 lets
it. The bytes go back when the call is done with them (a unary call: when it answered; WriteRaw:
once a chunk is written; Exec: once its stdin went to the process; ReadRaw: once a chunk was
handed to HTTP/2).

Requests are served in order (first come, first served), so a large message is not overtaken
forever by small ones; a request larger than the whole budget waits until the budget is all
free and then takes all of it. :class:`Budget` only keeps the count and the queue; the server
(``memoh_trio._bridge.budget``) does the waiting.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

#: Default budget: 64 MiB. Four 16 MiB messages (the largest accepted) at once; measured peak
#: of the server with 32 concurrent 16 MiB WriteFile calls: see the README's server section.
DEFAULT_BUDGET = 64 * 1024 * 1024
#: Smallest budget accepted (one 64 KiB HTTP/2 window's worth).
MIN_BUDGET = 64 * 1024


class Budget:
    """Bytes handed out of ``total``, and the requests waiting, in order."""

    def __init__(self, total: int) -> None:
        if total < MIN_BUDGET:
            raise ValueError(f"budget must be at least {MIN_BUDGET} bytes, not {total}")
        self.total = total
        self.used = 0
        self._waiting: OrderedDict[int, int] = OrderedDict()  # ticket -> bytes, oldest first
        self._tickets = itertools.count()
        #: Highest ``used`` seen (for tests and logs).
        self.peak = 0

    def clamp(self, n: int) -> int:
        """What a request of ``n`` bytes takes: at most the whole budget."""
        return min(max(n, 0), self.total)

    def ask(self, n: int) -> tuple[int, bool]:
        """Ask for ``n`` bytes (already clamped). Returns ``(ticket, granted now)``; a request
        that is not granted now waits for :meth:`grant` to name its ticket."""
        ticket = next(self._tickets)
        if not self._waiting and self.used + n <= self.total:
            self._take(n)
            return ticket, True
        self._waiting[ticket] = n
        return ticket, False

    def try_take(self, n: int) -> bool:
        """Take ``n`` bytes (already clamped) only if that needs no waiting and overtakes
        nobody (a read-ahead: optional)."""
        if self._waiting or self.used + n > self.total:
            return False
        self._take(n)
        return True

    def withdraw(self, ticket: int) -> list[int]:
        """A waiting request gave up. Returns the tickets granted because of that (a large
        request at the head may have held up smaller ones)."""
        self._waiting.pop(ticket, None)
        return self.grant()

    def give_back(self, n: int) -> list[int]:
        """``n`` bytes are free again. Returns the tickets granted now, in order."""
        if n < 0 or n > self.used:
            raise ValueError(f"giving back {n} bytes with {self.used} in use")
        self.used -= n
        return self.grant()

    def grant(self) -> list[int]:
        """Grant waiting requests in order while the one at the head fits."""
        granted: list[int] = []
        while self._waiting:
            ticket, n = next(iter(self._waiting.items()))
            if self.used + n > self.total:
                break
            del self._waiting[ticket]
            self._take(n)
            granted.append(ticket)
        return granted

    def waiting(self) -> int:
        return len(self._waiting)

    def _take(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)
