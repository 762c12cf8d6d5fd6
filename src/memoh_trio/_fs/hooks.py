"""Fault injection into the server's uploads, for tests (issue 4)."""

from __future__ import annotations

import dataclasses
import errno
import os


@dataclasses.dataclass
class ServerHooks:
    """Fault-injection seam for tests (issue 4). Costs one ``is None`` test per chunk when unused.

    Attributes:
        fail_write_nth: the Nth chunk write (1-based, counted over every upload of this server)
            raises ``OSError(fail_errno)``; ``None`` never fails.
        fail_errno: the errno of that failure (ENOSPC → RESOURCE_EXHAUSTED, EIO → INTERNAL...).
        stall_after_bytes: an upload stops reading its stream once it has received this many bytes
            (HTTP/2 flow control then stalls the sender) until the call is cancelled.
        writes: chunk writes seen so far (counter, for assertions).
        stalls: uploads that stalled so far (counter).
    """

    fail_write_nth: int | None = None
    fail_errno: int = errno.ENOSPC
    stall_after_bytes: int | None = None
    writes: int = 0
    stalls: int = 0

    def before_write(self, nbytes: int) -> None:
        """Called before each chunk write; raises the injected failure when due."""
        self.writes += 1
        if self.fail_write_nth is not None and self.writes == self.fail_write_nth:
            raise OSError(self.fail_errno, f"injected fault: {os.strerror(self.fail_errno)}")

    def should_stall(self, received: int) -> bool:
        """Whether an upload that has received ``received`` bytes stops reading its stream."""
        return self.stall_after_bytes is not None and received >= self.stall_after_bytes
