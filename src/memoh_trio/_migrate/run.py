"""One migration: lock, resume, walk → route → dispatch under one nursery and limiter, decide,
rename (see :mod:`memoh_trio._migrate` for the whole flow)."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, cast

import trio

from .._dirindex import DirIndex
from .._errors import RPCError
from .._finalize import decide, stopped_error
from .._lock import single_flight
from .._paths import symlink_on_the_way
from .._plan import Action, Kind, LargestFirst, Route, WalkEntry, classify, route
from .._progress import Progress, watch_report
from .._report import Failure, MigrationReport
from .._tarbatch import MAX_MEMBER_SIZE, Batcher
from .._tasks import with_helpers
from .._walk import BATCH_SIZE, walk
from . import lifecycle, meta, preflight, resume
from .context import (
    DEFAULT_CONCURRENCY,
    DEFAULT_STALL_TIMEOUT,
    FATAL_ERRORS,
    Context,
    Deadlined,
    Options,
    Verify,
    check_options,
    control_timeout,
    norm_dest,
    plain,
)
from .ledger import Ledger
from .lifecycle import Phase
from .resume import itemize_line
from .steps import Steps

if TYPE_CHECKING:
    from .._client import Client

#: Walk entries buffered between the walk thread and the dispatcher, in lists of WALK_BATCH.
WALK_BUFFER = 1024
WALK_BATCH = BATCH_SIZE
#: Files waiting for a stream slot. The dispatcher only blocks once this many are queued, so
#: small files found behind a run of large ones are batched (and their tar batch started) while
#: the large ones stream: on the mixed tree (c) the batches began at 0.34-0.44 s, after the
#: large files, when the dispatcher waited for a slot for each large file in walk order.
STREAM_QUEUE = 4096


class _Run:
    """One :func:`migrate` call: dispatches the walk to the transfer methods, records what they
    return in the ledger, and decides."""

    def __init__(self, src: str, client: Client, opts: Options, progress: Progress,
                 itemize: Callable[[str], None] | None = None) -> None:
        self.src = src
        #: the directory the run copies: renamed only if ``src`` still names it at the end
        self.identity = preflight.source_identity(src)
        self.opts = opts
        self.itemize = itemize
        self.raw_client = client  # the agent's Exec lasts the run: no control deadline
        self.agents: trio.Nursery | None = None  # where the container's agent runs
        # Control calls (ListDir, Mkdir, Rename, DeleteFile, Exec) get a deadline derived from
        # the stall timeout; WriteRaw has its own progress-based stall detection.
        if opts.stall_timeout is not None:
            client = cast("Client", Deadlined(client, control_timeout(opts.stall_timeout)))
        self.ledger = Ledger(MigrationReport(source=src, dest=opts.dest), progress)
        watch_report(progress, self.ledger.report)  # a stopped run is reported from it
        self.ctx = Context(client, opts, self.ledger, trio.CapacityLimiter(opts.concurrency))
        self.report = self.ledger.report
        self.existing = DirIndex()
        self.dest_links: set[str] = set()  # symlinks at the destination (resume.survey)
        self.tar_max_size = 0  # MAX_MEMBER_SIZE once the container was found to take tar
        self.batcher: Batcher[Action] = Batcher()
        self.tools = meta.Tools(opts.verify, opts.preserve)  # probed once, at the start
        self.batches = meta.Batches(self.ctx, self.tools)
        self.steps = Steps(self.ctx, self.tools, self.batches)  # carries out the steps
        self.flow = self.steps.flow

    async def run(self) -> MigrationReport:
        ledger = self.ledger
        start = time.monotonic()
        try:
            # The walk starts at once: the source is listed while the destination is surveyed
            # and the container probed (its entries wait in the channel to be routed).
            walked, entries = trio.open_memory_channel[list[WalkEntry]](
                WALK_BUFFER // WALK_BATCH)
            await self._with_agent(partial(self._copy_and_finish, walked, entries))
            # Checkpoint: any pending cancellation surfaces here, before the decision.
            await trio.lowlevel.checkpoint()
            self._finalize()
        except trio.Cancelled:
            ledger.cancelled = True
            raise
        except RPCError as exc:
            if isinstance(exc, FATAL_ERRORS):
                ledger.fatal = exc
            else:
                self.report.error = plain(exc)
            if ledger.fatal is None:
                self.report.status = "incomplete"
        finally:
            await self.steps.placer.discard(self.flow.take())  # held files a stopped run left
            self.report.seconds = time.monotonic() - start
            ledger.progress.finish()
        if ledger.fatal is not None:
            raise stopped_error(ledger.fatal, plain(ledger.fatal), files=self.report.files,
                                failures=len(self.report.failures), source=self.src)
        return self.report

    async def _with_agent(self, body: Callable[[], Awaitable[None]]) -> None:
        """Run ``body`` with a nursery where the container's agent can live (started by
        :meth:`_prepare`); once ``body`` ends, the agent says bye and ends. ``body``'s
        exception comes out as itself (the agent's task never raises one)."""
        error: Exception | None = None
        async with trio.open_nursery() as self.agents:
            try:
                await body()
            except Exception as exc:
                error = exc
            finally:
                self.tools.stop(abandon=error is not None or self.ledger.fatal is not None)
        self.agents = None
        if error is not None:
            raise error

    async def _copy_and_finish(self, walked: trio.MemorySendChannel[list[WalkEntry]],
                               entries: trio.MemoryReceiveChannel[list[WalkEntry]]) -> None:
        await with_helpers(partial(self._prepare_and_copy, entries),
                           [partial(self._walk, walked)])
        if not self.opts.dry_run and self.ledger.fatal is None:
            await self._finish()

    async def _prepare_and_copy(self, entries: trio.MemoryReceiveChannel[list[WalkEntry]]
                                ) -> None:
        """Survey and probe, then copy what the walk sends into ``entries``."""
        await self._prepare()
        opts = self.opts
        helpers = ([] if opts.dry_run or not opts.rename
                   else [partial(meta.writeback, self.ctx, self.tools)])
        await with_helpers(partial(self._copy_tree, entries), helpers)

    async def _prepare(self) -> None:
        """Check (a dry run) or create the destination, list what it holds, probe the tools."""
        opts = self.opts
        # A dry run asks the container as the real run would (a wrong token fails here too),
        # and counts what resume would not resend; it deletes nothing.
        found = await resume.survey(self.ctx)
        self.existing = found.existing if opts.resume else DirIndex()
        if not opts.dry_run:
            self.dest_links = found.links
            assert self.agents is not None
            await self.tools.start(self.ctx, self.raw_client, self.agents)
            if opts.tar_batches and (self.tools.known.agent
                                     or self.tools.caps.tar_ok(opts.verify)):
                self.tar_max_size = MAX_MEMBER_SIZE

    async def _finish(self) -> None:
        """After the copy: the parked files still waiting, the modes and mtimes still pending,
        then the container's ``sync`` if the rename may follow."""
        rest = self.flow.take()
        if rest:
            for batch in await self.steps.place(rest):
                self.ledger.batch_done(await self.batches.run(batch))
        for batch in self.batches.final():
            self.ledger.batch_done(await self.batches.run(batch))
        if self.opts.rename and self.ledger.done and not self.report.failures:
            agent = self.tools.agent if self.tools.known.agent else None
            self.report.flushed, why = await meta.flush(self.ctx, agent)
            if why is not None:
                self.report.failures.append(Failure(self.opts.dest or "/", why))

    @trio.lowlevel.enable_ki_protection
    def _finalize(self) -> None:
        """Decide and rename, with no checkpoint (and no KeyboardInterrupt) in between."""
        report = self.report
        decision = decide(self.ledger.outcome(rename=self.opts.rename, dry_run=self.opts.dry_run))
        report.status = decision.status
        if decision.status == "incomplete":
            report.error = decision.reason
        if decision.rename:
            report.renamed_to, error = preflight.rename_source(self.src, self.identity)
            if error is not None:
                report.status, report.error = "incomplete", error

    # ------------------------------------------------------------------ the copy nursery

    async def _copy_tree(self, recv: trio.MemoryReceiveChannel[list[WalkEntry]]) -> None:
        streams, stream_queue = trio.open_memory_channel[Action](STREAM_QUEUE)
        try:
            async with trio.open_nursery() as nursery:
                self.steps.nursery = nursery
                self.ledger.attach(nursery.cancel_scope)
                nursery.start_soon(self._feed_streams, stream_queue, nursery)
                async with streams, recv:
                    async for entries in recv:
                        actions = [classify(entry) for entry in entries]
                        self.ledger.found(actions)
                        for action in actions:
                            await self._dispatch(action, streams, nursery)
                    # Every entry of the walk is counted now: the totals are final.
                    self.ledger.progress.scan_finished()
                    self.flow.routed_all = True
                    self.steps.place_rest()
                    if not self.opts.dry_run:
                        self.steps.start(*self.batches.walk_done())
                        if len(self.batcher):
                            await self.steps.start_in_slot(
                                nursery, partial(self.steps.tar_task, self.batcher.take()))
        finally:
            self.steps.nursery = None
            self.ledger.detach()
        if nursery.cancel_scope.cancelled_caught:
            self.ledger.cancelled = self.ledger.fatal is None

    async def _walk(self, send: trio.MemorySendChannel[list[WalkEntry]]) -> None:
        """Walk into ``send`` (a helper of the copy: it never raises ``Exception``). If the
        copy stopped reading (an error, a cancellation), the walk just ends, incomplete."""
        try:
            await walk(self.src, send, batch_size=WALK_BATCH)
        except trio.BrokenResourceError:
            return
        self.ledger.walk_complete = True

    async def _feed_streams(self, queue: trio.MemoryReceiveChannel[Action],
                            nursery: trio.Nursery) -> None:
        """Start the queued entries' streams as the limiter has slots, the largest file first
        (see :class:`memoh_trio._plan.LargestFirst`)."""
        pending: LargestFirst[Action] = LargestFirst()
        async with queue:
            open_ = True
            while open_ or pending:
                if open_ and not pending:
                    try:
                        action = await queue.receive()
                    except trio.EndOfChannel:
                        break
                    pending.push(action, action.size)
                token = object()
                await self.ctx.limiter.acquire_on_behalf_of(token)
                # What the walk queued meanwhile competes for this slot too.
                while open_ and len(pending) < STREAM_QUEUE:
                    try:
                        action = queue.receive_nowait()
                    except trio.WouldBlock:
                        break
                    except trio.EndOfChannel:
                        open_ = False
                        break
                    pending.push(action, action.size)
                nursery.start_soon(self.steps.in_slot, token,
                                   partial(self.steps.copy_entry, pending.pop()))

    async def _dispatch(self, action: Action, streams: trio.MemorySendChannel[Action],
                        nursery: trio.Nursery) -> None:
        """Send one entry (counted already) where :func:`memoh_trio._plan.route` says."""
        ledger = self.ledger
        where = route(action, dry_run=self.opts.dry_run,
                      unchanged=resume.unchanged(self.existing, action),
                      tar_max_size=self.tar_max_size, verify_hash=self.opts.verify == "sha256",
                      dest_links=self.dest_links)
        if where is Route.FAIL:
            if action.rel == "":  # the root itself could not be listed
                ledger.walk_complete = False
            ledger.fail(action, action.reason)
        elif where is Route.BLOCKED:
            # Nothing is done for this entry (the scripts refuse to write through it, too).
            link = symlink_on_the_way(action.rel, self.dest_links)
            ledger.fail(action, f"a symlink is in the way at the destination: {link}")
        elif where is Route.SKIP:
            ledger.skipped(action)
        elif where in (Route.DRY, Route.DRY_UNCHANGED):
            ledger.predicted(action, unchanged=where is Route.DRY_UNCHANGED)
            if where is Route.DRY:
                self._itemize(action)
        elif where is Route.DIR:
            if self.opts.dry_run:
                self._itemize(action)
            else:
                self.batches.add_dir(action)
        elif where is Route.UNCHANGED:
            ledger.unchanged(action)
            if lifecycle.step(action.rel, Phase.UNCHANGED, lifecycle.meta_done_event(
                    self.tools.known)) is Phase.META:
                self.steps.start(self.batches.add("meta", action))
        elif where in (Route.LINK, Route.HASH):
            self.steps.start(self.batches.add("links" if where is Route.LINK else "hash", action))
        elif where is Route.TAR:
            if self.flow.routed_to_tar():
                # A tar batch the shell does not move is coming: python3 is asked now, beside
                # the walk, not once the batch is full (on the mixed tree (c) the first one
                # filled at ~60 ms; files streamed before the answer cannot be parked).
                self.tools.ask_python(self.ctx, nursery)
            full = self.batcher.add(action, action.size, action.rel)
            if full:
                await self.steps.start_in_slot(nursery, partial(self.steps.tar_task, full))
        else:
            if action.kind is Kind.MKDIR:
                self.batches.add_dir(action)
            await streams.send(action)

    def _itemize(self, action: Action) -> None:
        if self.itemize is not None:
            self.itemize(itemize_line(action, self.existing.get(action.rel)))

    # ------------------------------------------------------------------ tasks

async def migrate(
    src: str | os.PathLike[str],
    client: Client,
    *,
    dest: str = "",
    concurrency: int = DEFAULT_CONCURRENCY,
    chunk_size: int | None = None,
    verify: Verify = "size",
    preserve: bool = True,
    rename: bool = True,
    dry_run: bool = False,
    resume: bool = True,
    progress: Progress | None = None,
    stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
    lock_wait: float = 0.0,
    tar_batches: bool = True,
    itemize: Callable[[str], None] | None = None,
    rename_without_flush: bool = False,
    agent: bool = True,
) -> MigrationReport:
    """Copy the tree under ``src`` into the container and, on full success, rename ``src``.

    Args:
        src: the source directory on this host.
        client: a connected :class:`memoh_trio.Client`.
        dest: destination directory under the server root ("" = the root, as the seed does).
        concurrency: file streams at once.
        chunk_size: WriteRaw chunk size (``None``: the client's default).
        verify: ``"size"`` (bytes read == written == size at open == the container's ``Stat``
            of the uploaded file) or ``"sha256"`` (also the container's hash of the uploaded
            file, before it is moved into place; and files resume would skip are hashed in the
            container and on this host, and sent again unless the hashes agree).
        preserve: apply permission bits and mtimes in the container (batched Exec).
        rename: rename ``src`` to ``src + ".migrated"`` when everything made it.
        dry_run: predict the run: ask the container what it has (so resume applies and the
            credentials are checked), walk and classify; copy, delete and rename nothing.
        resume: skip files already at the destination with the same size and mtime.
        progress: updated as the copy goes (see :class:`memoh_trio.Progress`).
        stall_timeout: fail a file whose stream makes no progress for this many seconds
            (default 60 s; ``None`` waits forever).
        lock_wait: seconds to wait for another migration of ``src`` (0: fail at once). The
            lock is keyed on the real directory (``realpath``); a dry run takes none.
        tar_batches: send runs of small files as tar streams through Exec (see
            :mod:`memoh_trio._tarbatch`) when the container has ``tar``; off: one WriteRaw +
            Rename per file.
        itemize: with ``dry_run``, called with one line per entry the run would send, in
            ``rsync -n -i`` form (``>f+++++++++ path`` a new file, ``>f.st...... path`` one
            that differs in size/time, ``cd+++++++++ dir/``, ``cL+++++++++ link -> target``).
        rename_without_flush: rename ``src`` even where the container cannot be asked to flush
            the copy to its disk (a server without Exec): off, such a run copies everything
            and keeps the source (``report.flushed`` is ``False``, the failure says why).
        agent: where the container runs python3, carry out every container step with one
            python3 started over one Exec (the container agent: every path opened through
            directory descriptors, never through a symlink; one process instead of one per
            step). Off: a python3 process (or the shell) per step, as where it cannot start.

    Returns:
        The report; ``report.ok`` is false when some entries failed (the source is then kept).
        A source whose ``.migrated`` sibling exists and that is gone itself is
        ``already-migrated``; an empty source is ``nothing-to-do`` (neither is renamed, as in
        the seed).

    Raises:
        ConfigError: bad options, or a destination that is a file. SourceError: bad source
        (missing, not a directory, unreadable, itself a ``.migrated`` directory, or with a
        ``.migrated`` sibling already there). MigrationBusy: another run holds the
        lock. Unavailable / Unauthenticated: the connection was lost or refused (fatal; the copy
        was stopped and nothing renamed).
    """
    opts = Options(dest=dest, concurrency=concurrency, chunk_size=chunk_size,
                   verify=verify, preserve=preserve, rename=rename, dry_run=dry_run,
                   resume=resume, stall_timeout=stall_timeout, tar_batches=tar_batches,
                   rename_without_flush=rename_without_flush, agent=agent)
    return await migrate_with(src, client, opts, progress=progress, lock_wait=lock_wait,
                              itemize=itemize)


async def migrate_with(src: str | os.PathLike[str], client: Client, opts: Options, *,
                       progress: Progress | None = None, lock_wait: float = 0.0,
                       itemize: Callable[[str], None] | None = None) -> MigrationReport:
    """:func:`migrate` with its options as one :class:`.context.Options` (the one type that
    :func:`migrate`, :func:`.bots.migrate_bot` and :func:`.bots.migrate_all` build from their
    keyword arguments)."""
    opts = replace(opts, dest=norm_dest(opts.dest))
    check_options(opts)
    progress = progress if progress is not None else Progress()
    # SRC by its real directory: an alias (or a symlinked parent) meets the same lock, and the
    # rename renames the real directory (see check_source). Reruns, typos, empty sources: see
    # .preflight.
    absolute, state = preflight.source_state(preflight.real_source(src))
    if state != "migrate":
        progress.finish()
        return MigrationReport(source=absolute, dest=opts.dest, status=state)
    path = preflight.check_source(src)
    if opts.dry_run:  # changes nothing, so takes no lock (works on a read-only data root)
        return await _Run(path, client, opts, progress, itemize).run()
    async with single_flight(path, wait=lock_wait):
        if preflight.already_migrated(path):  # the run we waited for renamed it
            progress.finish()
            return MigrationReport(source=path, dest=opts.dest, status="already-migrated")
        preflight.check_source(path)
        return await _Run(path, client, opts, progress, itemize).run()
