"""Which connections the server keeps when file descriptors run out. No I/O here.

Every accepted connection costs the server a descriptor, and so does every file, pipe and
process a call opens. A flood of idle connections (no token needed to open one) must not take
the server down, nor starve the calls of descriptors. Rules, all in :class:`Admission`:

* the server holds at most :func:`connection_cap` connections: the soft ``RLIMIT_NOFILE`` less
  a reserve for the calls' own files, pipes and processes;
* at the cap, or when ``accept()`` fails for lack of descriptors or memory
  (:data:`OUT_OF_RESOURCES`), the oldest connections that have not yet had a call past the
  token check (*untrusted*) are closed first (:meth:`Admission.shed`), and no more are accepted
  until one of them is gone; trusted connections are never closed for room;
* with nothing left to close, accepting pauses until a connection ends (or a short retry
  delay passes), as Go's ``net/http`` and trio's ``serve_listeners`` do: the waiting
  connections stay in the kernel's backlog meanwhile.

The server (:mod:`memoh_trio._bridge.accept`) carries out what this decides: it accepts,
closes the connections :meth:`Admission.shed` names, and reports calls and closings back.
"""

from __future__ import annotations

import errno
import itertools
from dataclasses import dataclass

#: ``accept()`` errors that mean "no room now" rather than a broken listener (Linux reports
#: the listening socket readable again at once, so these must lead to a pause, not a retry).
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: ``accept()`` errors about one connection that went away before it was taken: skip it.
SKIPPABLE = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EAGAIN})
#: Descriptors kept for the calls' files, pipes and processes: at least this many...
MIN_RESERVE = 32
#: ...or this fraction of the limit (1/8: 128 of 1,024, 32 of 256).
RESERVE_FRACTION = 8
#: How long accepting pauses when nothing can be closed and no connection ends (trio's
#: ``serve_listeners`` sleeps 100 ms on the same errors).
RETRY_DELAY = 0.1


def connection_cap(nofile_soft: int) -> int:
    """How many connections a server with this soft descriptor limit holds at once (>= 1)."""
    reserve = max(MIN_RESERVE, nofile_soft // RESERVE_FRACTION)
    return max(1, nofile_soft - reserve)


@dataclass
class _Conn:
    trusted: bool = False
    closing: bool = False


class Admission:
    """The connections a server holds, in the order they were accepted, and whom to close."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"cap must be >= 1, not {cap}")
        self.cap = cap
        self._conns: dict[int, _Conn] = {}  # insertion order: oldest first
        self._keys = itertools.count()
        #: Connections closed to make room so far (for logs and tests).
        self.shed_total = 0

    def __len__(self) -> int:
        """Connections held, those being closed included (their descriptors are not free yet)."""
        return len(self._conns)

    def accepted(self) -> int:
        """Record a new connection; returns its key."""
        key = next(self._keys)
        self._conns[key] = _Conn()
        return key

    def trust(self, key: int) -> None:
        """A call on this connection got past the token check (or no token is required)."""
        conn = self._conns.get(key)
        if conn is not None:
            conn.trusted = True

    def closed(self, key: int) -> None:
        """The connection is gone and its descriptor free (idempotent)."""
        self._conns.pop(key, None)

    def full(self) -> bool:
        """At the cap: make room before accepting another connection."""
        return len(self._conns) >= self.cap

    def closing(self) -> int:
        """Connections asked to close and not gone yet."""
        return sum(1 for conn in self._conns.values() if conn.closing)

    def shed(self, count: int = 1) -> list[int]:
        """Pick up to ``count`` connections to close for room: the oldest untrusted ones not
        already closing. They stay counted until :meth:`closed`. Returns their keys (maybe
        none: then wait for a connection to end)."""
        picked: list[int] = []
        for key, conn in self._conns.items():
            if len(picked) >= count:
                break
            if not conn.trusted and not conn.closing:
                conn.closing = True
                picked.append(key)
        self.shed_total += len(picked)
        return picked

    def room_needed(self) -> int:
        """How many connections must go before another may be accepted (0: accept now)."""
        return max(0, len(self._conns) - self.cap + 1)
