"""The executor of one run: carries out the lifecycle's steps (:mod:`.lifecycle`) for its
entries, in the run's copy nursery, and records what they return in the ledger.

:class:`Steps` is given each entry the route sent to its own RPCs (:meth:`Steps.copy_entry`), each
full tar batch (:meth:`Steps.tar_task`) and each batched Exec that is due (:meth:`Steps.start`);
every choice between ways is :mod:`.lifecycle`'s, taken from what is known.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from .._agent.driver import AgentError
from .._errors import MemohError
from .._plan import Action, Kind
from . import agentsteps, lifecycle, meta, place, stream, tar
from .context import FATAL_ERRORS, Context, plain
from .lifecycle import Event, Flow, Phase


class Steps:
    """Carries out the steps of one run's entries (see the module docstring).

    Attributes:
        nursery: the copy nursery, while it runs (tasks start there).
        flow: the counts the lifecycle's decisions read, and the files held for placement.
    """

    def __init__(self, ctx: Context, tools: meta.Tools, batches: meta.Batches) -> None:
        self.ctx = ctx
        self.ledger = ctx.ledger
        self.tools = tools
        self.batches = batches
        self.placer = place.Placer(ctx)  # places held files (python3)
        self.flow: Flow[tuple[Action, str]] = Flow(place.PLACE_BATCH)
        self.nursery: trio.Nursery | None = None
        #: the sources' SHA-256 of held files (``verify="sha256"``: the agent checks them)
        self.hashes: dict[str, str] = {}

    async def start_in_slot(self, nursery: trio.Nursery,
                             task: Callable[[], Awaitable[None]]) -> None:
        """Start ``task()`` once the limiter has a slot for it (held until it ends)."""
        token = object()
        await self.ctx.limiter.acquire_on_behalf_of(token)
        nursery.start_soon(self.in_slot, token, task)

    async def in_slot(self, token: object, task: Callable[[], Awaitable[None]]) -> None:
        try:
            await task()
        finally:
            self.ctx.limiter.release_on_behalf_of(token)

    async def copy_entry(self, action: Action, phase: Phase = Phase.STREAM) -> None:
        """Mkdir or copy one entry through its own RPCs and record the outcome. ``phase``:
        ``STREAM`` (a first send: held for placement where :func:`.lifecycle.after_sent` says)
        or ``RESEND`` (a batch step could not vouch for it: checked and renamed here)."""
        held = sent = False
        rel = action.rel

        def hold(action: Action, part: str, sha256: str | None) -> bool:
            # Sent whole and checked here: SENT -> HELD or CHECK, from what is known.
            nonlocal held, sent
            sent = True
            if lifecycle.step(rel, phase, Event.SENT) is Phase.CHECK:  # RESEND: never held
                return False
            nursery = self.nursery
            decision = lifecycle.after_sent(self.tools.known) if nursery else Event.CHECK
            if nursery is None or lifecycle.step(rel, Phase.SENT, decision) is Phase.CHECK:
                return False
            held = True
            if sha256 is not None:
                self.hashes[rel] = sha256
            full = self.flow.hold((action, part))
            if full is not None:
                nursery.start_soon(self._place_task, full)
            return True

        self.flow.stream_started()
        try:
            if action.kind is Kind.MKDIR:
                why = await self._mkdir(rel)
                if why is None:
                    lifecycle.step(rel, Phase.MKDIR, Event.OK)
                    self.ledger.made_dir()
                    return
            else:
                why = await stream.copy_file(self.ctx, action, park=hold,
                                             at_top=self.tools.known.agent)
        except FATAL_ERRORS as exc:
            self.ledger.lose(exc)
            return
        except (MemohError, OSError) as exc:
            why = plain(exc)
        except Exception as exc:  # a bug below us fails this entry, not the whole run
            why = f"unexpected error: {type(exc).__name__}: {exc}"
        finally:
            self.flow.stream_ended()
            self.place_rest()
        if held:
            return
        if why is not None:
            where = (Phase.MKDIR if action.kind is Kind.MKDIR
                     else Phase.CHECK if sent else phase)
            lifecycle.step(rel, where, stream.check_event(why) if sent else Event.REFUSED)
            self.ledger.fail(action, why)
            return
        lifecycle.step(rel, Phase.CHECK, Event.OK)
        self.start(self._moved(action))

    async def _mkdir(self, rel: str) -> str | None:
        """An empty directory: by the agent (never through a symlink) where it runs, else
        ``Mkdir``; ``None`` once it is there, else why not."""
        agent = self.tools.agent
        if agent is not None and self.tools.known.agent:
            lifecycle.note(rel, lifecycle.Step.MKDIR_AGENT)
            try:
                record = (await agent.mkdir([{"path": rel}]))[0]
            except (AgentError, IndexError):
                self.tools.lose_python()  # Mkdir below, as without it
            else:
                return None if record.ok else f"cannot create the directory: {record.error}"
        await self.ctx.client.mkdir(self.ctx.path(rel))
        return None

    def _moved(self, action: Action) -> meta.Batch | None:
        """A file at its final path (MOVED): counted copied, its mode and mtime queued; the
        metadata batch now due."""
        self.ledger.copied(action)
        if lifecycle.step(action.rel, Phase.MOVED,
                          lifecycle.meta_done_event(self.tools.known)) is Phase.META:
            return self.batches.add("meta", action)
        return None

    def place_rest(self) -> None:
        """Once every entry is routed and no stream runs, place the files still held at once,
        beside the placement or tar batches still running, not after them."""
        nursery = self.nursery
        if (self.flow.rest_due() and nursery is not None
                and not nursery.cancel_scope.cancel_called and self.ledger.fatal is None):
            nursery.start_soon(self._place_task, self.flow.take())

    async def _place_task(self, batch: list[tuple[Action, str]]) -> None:
        self.start(*await self.place(batch))

    async def place(self, batch: list[tuple[Action, str]]) -> list[meta.Batch]:
        """Place held files (python3, or each the per-file way) and record the outcome; the
        metadata batches now due. Cancelled, the temporary files not placed are deleted."""
        unresolved = list(batch)  # held: their temporary files are this task's to delete
        try:
            return await self._place_held(unresolved)
        except trio.Cancelled:
            await self.placer.discard(unresolved)
            raise
        finally:
            for action, _ in batch:
                self.hashes.pop(action.rel, None)

    async def _place_held(self, held: list[tuple[Action, str]]) -> list[meta.Batch]:
        """:meth:`_place`; ``held`` keeps the files not resolved yet."""
        tools = self.tools
        wanted = self.flow.wants_python(len(held))
        if wanted:
            await tools.settled(self.ctx)  # asked now if nothing asked yet
        due: list[meta.Batch | None] = []
        placed_by_python = lifecycle.python_places(tools.known, wanted)
        if placed_by_python:
            try:
                async with self.ctx.limiter:
                    agent = tools.agent if tools.known.agent else None
                    outcome = (await self.placer.place_by_agent(held, agent, self.hashes)
                               if agent is not None
                               else await self.placer.place(held, tools.caps.python_exe))
            except FATAL_ERRORS as exc:
                self.ledger.lose(exc)
                held.clear()  # left to the next run's survey
                return []
            held[:] = outcome.unsure
            if outcome.python_lost:
                tools.lose_python()
            self.ledger.tar_done(tar.BatchOutcome(copied=outcome.placed, failed=outcome.failed,
                                                  meta_applied=outcome.meta_applied))
            if not outcome.meta_applied:  # HELD -> MOVED -> META_DUE / NO_META
                event = lifecycle.meta_done_event(tools.known)
                lifecycle.step([a.rel for a in outcome.placed], Phase.MOVED, event)
                if event is Event.META_DUE:
                    due += self.batches.tar_copied(outcome.placed)
        # HELD -> CHECK (PER_FILE), or RECHECK (no record vouched for it): Stat, Rename,
        # the files of the batch at once (as their streams would have, one by one).
        resend: list[Action] = []
        where = Phase.RECHECK if placed_by_python else Phase.CHECK
        checks, held[:] = list(held), []  # each check deletes its temporary file if it stops
        async with trio.open_nursery() as nursery:
            for action, part in checks:
                nursery.start_soon(self._check_held, action, part, where, due, resend)
        for action in resend:
            await self.copy_entry(action, Phase.RESEND)
        return [b for b in due if b is not None]

    async def _check_held(self, action: Action, part: str, where: Phase,
                          due: list[meta.Batch | None], resend: list[Action]) -> None:
        """One held file the per-file way (``where``: CHECK, or RECHECK when a placement did
        not vouch for it); its outcome recorded, its metadata batch (if due) in ``due``, and
        in ``resend`` if it must be sent again."""
        if where is Phase.CHECK:
            lifecycle.step(action.rel, Phase.HELD, Event.PER_FILE)
        try:
            why = await stream.finish_parked(self.ctx, action, part, self.hashes.get(action.rel))
        except FATAL_ERRORS as exc:
            self.ledger.lose(exc)
            return
        except stream.TemporaryGone:
            if lifecycle.step(action.rel, where, Event.GONE) is Phase.RESEND:
                self.ledger.take_back(action.rel)  # counted again as it is sent again
                resend.append(action)  # python3 may have moved it: sent again
                return
            why = "the temporary file is missing in the container after the upload"
        except (MemohError, OSError) as exc:
            why = plain(exc)
            lifecycle.step(action.rel, where, Event.REFUSED)
        else:
            lifecycle.step(action.rel, where,
                           Event.OK if why is None else stream.check_event(why))
        if why is not None:
            self.ledger.fail(action, why)
        else:
            due.append(self._moved(action))

    async def tar_task(self, batch: list[Action]) -> None:
        assert self.nursery is not None, "tar batches run in the copy nursery"
        if len(batch) > meta.SHELL_META_MAX:  # asked already (_dispatch): never waits for ever
            self.tools.ask_python(self.ctx, self.nursery)
        try:
            agent = self.tools.agent if self.tools.known.agent else None
            if agent is not None:
                outcome = await agentsteps.send_files(self.ctx, agent, batch)
            else:
                if not (await self.tools.shell(self.ctx)).tar_ok(self.ctx.opts.verify):
                    # the agent was lost in a container without tar: the per-file way
                    lifecycle.step([a.rel for a in batch], Phase.TAR, Event.LOST)
                    outcome = tar.BatchOutcome(resend=list(batch))
                else:
                    outcome = await tar.send_batch(self.ctx, batch, py_move=self.tools.py_move)
            if outcome.python_lost:
                self.tools.lose_python()
        except FATAL_ERRORS as exc:
            self.ledger.lose(exc)
            return
        except Exception as exc:  # a bug below us fails these entries, not the whole run
            why = f"unexpected error: {type(exc).__name__}: {exc}"
            outcome = tar.BatchOutcome(failed=[(action, why) for action in batch])
        self.ledger.tar_done(outcome)
        if not outcome.meta_applied and outcome.copied:  # TAR -> MOVED -> META_DUE / NO_META
            lifecycle.step([a.rel for a in outcome.copied], Phase.MOVED,
                           lifecycle.meta_done_event(self.tools.known))
            self.start(*self.batches.tar_copied(outcome.copied))
        # A file that changed while read goes the per-file way (which fails it if it keeps
        # changing, or copies the new contents); one no record vouched for is sent again.
        for action in outcome.changed:
            await self.copy_entry(action)
        for action in outcome.resend:
            await self.copy_entry(action, Phase.RESEND)

    def start(self, *batches: meta.Batch | None) -> None:
        """Start batched Execs beside the copy (``None``: no batch is due)."""
        for batch in batches:
            if batch is not None:
                assert self.nursery is not None, "batches start only while the copy runs"
                self.nursery.start_soon(self._batch_task, batch)

    async def _batch_task(self, batch: meta.Batch) -> None:
        async with self.ctx.limiter:
            try:
                result = await self.batches.run(batch)
            except FATAL_ERRORS as exc:
                self.ledger.lose(exc)
                return
            self.ledger.batch_done(result)
            if result.job == "hash":  # the files vouched for: their modes and mtimes
                self.start(*[self.batches.add("meta", action) for action in result.done])
            for action in result.resend:  # with this task's slot, one after another
                await self.copy_entry(action)
