"""Streamed files checked and moved into place in batches, where the container has python3.

A file streamed through ``WriteRaw`` lands under a temporary name beside its final one
(:mod:`.stream`). Checked and renamed one by one, each costs two more calls (``Stat``, then
``Rename``) that wait behind the bulk data on the connection: on the mixed tree (c) into
Memoh's Go server, 71 files of 0.29-48 MiB, their 142 calls took 8-11 ms each. Where the
container has python3 (and ``verify="size"``), the run *holds* (parks) the file instead
(:func:`.lifecycle.after_sent`, :class:`.lifecycle.Flow`), and one Exec of the python3 mover
of tar batches (:data:`memoh_trio._scripts.PY_MOVE`) checks each parked file holds the bytes
sent, applies its mode and mtime and renames it onto its final name, each proven by its ``O``
record.

A file no record vouched for (the Exec failed or stopped short, exited non-zero, or it was
not found) goes the per-file way (:func:`.stream.finish_parked`: ``Stat``, ``Rename``; its
temporary file gone, it is sent again); a file that failed its
check, or found a directory or a symlink in its way, fails and its temporary file is deleted.
Until its record is in, a parked file is neither copied nor failed, so the run cannot rename
its source. Nothing here records anything: :meth:`Placer.place` returns what happened.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import trio

from .. import _scripts
from .._agent.session import Agent
from .._errors import MemohError
from .._plan import Action
from . import agentsteps, lifecycle
from .context import EXEC_TIMEOUT, FATAL_ERRORS, Context
from .lifecycle import Event, Phase, Step

#: Parked files per mover Exec: a batch is placed once this many wait, the rest once the
#: streams are over. Each Exec starts a python3 in the container: on the mixed tree (c), 71
#: files streamed, in process, 32 against 16 was faster in 9 of 12 interleaved rounds (median
#: of the differences -15 ms; medians 0.390 / 0.404 s); 64 against 32 could not be told apart.
PLACE_BATCH = 32


@dataclass
class Placed:
    """What became of a batch of held files (each in exactly one list)."""

    placed: list[Action] = field(default_factory=list)
    failed: list[tuple[Action, str]] = field(default_factory=list)
    #: no record vouched for it: still under this temporary name, or moved already (RECHECK)
    unsure: list[tuple[Action, str]] = field(default_factory=list)
    #: the placed files also got their modes and mtimes (to the nanosecond)
    meta_applied: bool = False
    #: python3 did not vouch for every file (crashed, output cut, non-zero exit)
    python_lost: bool = False


class Placer:
    """Places held files: ``(action, temporary path relative to the destination)``."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def place(self, batch: Sequence[tuple[Action, str]], exe: str) -> Placed:
        """Check, move into place and give modes and mtimes to ``batch`` in one Exec of
        python3 (run as ``exe``). Cancelled, the batch's temporary files are deleted.

        Each file's record becomes its event (:func:`.lifecycle.events_of`): HELD -> DONE
        (``O`` under exit 0), FAILED (a check or a conflict), or RECHECK (anything else).

        Raises:
            Unavailable / Unauthenticated: fatal to the run (the temporary files are left for
            the next run's survey, which deletes stale ones).
        """
        ctx = self._ctx
        out = Placed(meta_applied=ctx.opts.preserve)
        lifecycle.note([a.rel for a, _ in batch], Step.PLACE_PYTHON)
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
            lifecycle.step([a.rel for a, _ in batch], Phase.HELD, Event.PY_LOST)
            out.unsure = list(batch)
            out.python_lost = True
            return out
        records = _scripts.parse_records(res.stdout, len(batch))
        events = lifecycle.events_of(records, res.exit_code, len(batch), python=True)
        out.python_lost = lifecycle.python_failed(records, res.exit_code)
        await self._settle(out, batch, events, list(records.values()))
        return out

    async def place_by_agent(self, batch: Sequence[tuple[Action, str]], agent: Agent,
                             hashes: Mapping[str, str]) -> Placed:
        """:meth:`place`, carried out by the container's agent (``hashes``: the sources'
        SHA-256 by path, checked by the agent before each rename, with ``verify="sha256"``)."""
        ctx = self._ctx
        out = Placed(meta_applied=ctx.opts.preserve)
        events, whys = await agentsteps.place(
            ctx, agent, batch, dict(hashes) if ctx.opts.verify == "sha256" else None)
        out.python_lost = Event.PY_LOST in events
        await self._settle(out, batch, events, whys)
        return out

    async def _settle(self, out: Placed, batch: Sequence[tuple[Action, str]],
                      events: Sequence[Event], whys: Sequence[str | None]) -> None:
        """File each held file by its event: HELD -> DONE/MOVED (placed), RECHECK (unsure),
        or FAILED (its temporary file deleted)."""
        ctx = self._ctx
        for (action, part), event, record in zip(batch, events, whys, strict=True):
            phase = lifecycle.step(action.rel, Phase.HELD, Event.OK_META if (
                event is Event.OK and out.meta_applied) else event)
            if phase in (Phase.DONE, Phase.MOVED):
                out.placed.append(action)
            elif phase is Phase.RECHECK:
                out.unsure.append((action, part))
            else:
                await ctx.discard(ctx.path(part))
                why = record or "failed"
                why = (why if why.startswith(_scripts.CHECK_FAILED)
                       else f"cannot move the file into place: {why}")
                out.failed.append((action, why))

    async def discard(self, held: Sequence[tuple[Action, str]]) -> None:
        """Delete the temporary files still held (a run that stops before placing them);
        after a fatal error they are left to the next run's survey, which deletes stale
        temporary files (the link is gone: each deletion would only wait for its timeout)."""
        for action, part in held:
            self._ctx.ledger.take_back(action.rel)
            if self._ctx.ledger.fatal is None:
                await self._ctx.discard(self._ctx.path(part))
