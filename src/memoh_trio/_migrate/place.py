"""Streamed files checked and moved into place in batches, where the container has python3.

A file streamed through ``WriteRaw`` lands under a temporary name beside its final one
(:mod:`.stream`). Checked and renamed one by one, each costs two more calls (``Stat``, then
``Rename``) that wait behind the bulk data on the connection: on the mixed tree (c) into
Memoh's Go server, 71 files of 0.29-48 MiB, their 142 calls took 8-11 ms each. Where the
container has python3 (and ``verify="size"``), the run *parks* the file instead
(:meth:`Placer.park`), and one Exec of the python3 mover of tar batches
(:data:`memoh_trio._scripts.PY_MOVE`) checks each parked file holds the bytes sent, applies its
mode and mtime and renames it onto its final name, each proven by its ``O`` record.

A file without a record (the Exec failed or stopped short, or it was not found) goes the
per-file way (:func:`.stream.finish_parked`: ``Stat``, ``Rename``); a file that failed its
check, or found a directory or a symlink in its way, fails and its temporary file is deleted.
Until its record is in, a parked file is neither copied nor failed, so the run cannot rename
its source. Nothing here records anything: :meth:`Placer.place` returns what happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from .. import _scripts
from .._errors import MemohError
from .._plan import Action
from .context import EXEC_TIMEOUT, FATAL_ERRORS, Context

#: Parked files per mover Exec: a batch is placed once this many wait, the rest once the
#: streams are over. Each Exec starts a python3 in the container: on the mixed tree (c), 71
#: files streamed, in process, 32 against 16 was faster in 9 of 12 interleaved rounds (median
#: of the differences -15 ms; medians 0.390 / 0.404 s); 64 against 32 could not be told apart.
PLACE_BATCH = 32


@dataclass
class Placed:
    """What became of a batch of parked files (each in exactly one list)."""

    placed: list[Action] = field(default_factory=list)
    failed: list[tuple[Action, str]] = field(default_factory=list)
    #: no record: still parked under this temporary name, for the per-file way
    unsure: list[tuple[Action, str]] = field(default_factory=list)
    #: the placed files also got their modes and mtimes (to the nanosecond)
    meta_applied: bool = False


class Placer:
    """The parked files of one run: ``(action, temporary path relative to the destination)``."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._parked: list[tuple[Action, str]] = []

    def park(self, action: Action, part: str) -> list[tuple[Action, str]] | None:
        """Park one streamed file (sent whole and checked on this side); the batch to place
        if it is now full."""
        self._parked.append((action, part))
        return self.take() if len(self._parked) >= PLACE_BATCH else None

    def take(self) -> list[tuple[Action, str]]:
        """The parked files not handed out yet."""
        batch, self._parked = self._parked, []
        return batch

    async def place(self, batch: Sequence[tuple[Action, str]], exe: str) -> Placed:
        """Check, move into place and give modes and mtimes to ``batch`` in one Exec of
        python3 (run as ``exe``). Cancelled, the batch's temporary files are deleted.

        Raises:
            Unavailable / Unauthenticated: fatal to the run (the temporary files are left for
            the next run's survey, which deletes stale ones).
        """
        ctx = self._ctx
        out = Placed(meta_applied=ctx.opts.preserve)
        try:
            res = await ctx.exec(_scripts.py_place_command(exe), timeout_seconds=EXEC_TIMEOUT,
                                 stdin=_scripts.py_place_records(batch,
                                                                 preserve=ctx.opts.preserve))
        except FATAL_ERRORS:
            raise
        except trio.Cancelled:
            for _, part in batch:  # renamed already, or deleted now
                await ctx.discard(ctx.path(part))
            raise
        except (MemohError, OSError):
            out.unsure = list(batch)
            return out
        records = _scripts.parse_records(res.stdout, len(batch))
        for i, (action, part) in enumerate(batch):
            record = records[i]
            if record is None:
                out.placed.append(action)
            elif record in (_scripts.NO_RECORD, _scripts.MOVE_FAILED):
                out.unsure.append((action, part))
            else:
                ctx.progress.unsent(action.size)
                await ctx.discard(ctx.path(part))
                why = (record if record.startswith(_scripts.CHECK_FAILED)
                       else f"cannot move the file into place: {record}")
                out.failed.append((action, why))
        return out

    async def discard(self) -> None:
        """Delete the temporary files still parked (a run that stops before placing them);
        after a fatal error they are left to the next run's survey, which deletes stale
        temporary files (the link is gone: each deletion would only wait for its timeout)."""
        for action, part in self.take():
            self._ctx.progress.unsent(action.size)
            if self._ctx.ledger.fatal is None:
                await self._ctx.discard(self._ctx.path(part))
