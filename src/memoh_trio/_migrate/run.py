"""One migration: lock, resume, walk → route → dispatch under one nursery and limiter, decide,
rename (see :mod:`memoh_trio._migrate` for the whole flow)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, cast

import trio

from .._errors import ConfigError, MemohError, RPCError, Unavailable
from .._finalize import Outcome, decide
from .._lock import single_flight
from .._paths import symlink_on_the_way
from .._plan import (
    REQUIRED_KINDS,
    Action,
    Kind,
    Route,
    WalkEntry,
    classify,
    describe_os_error,
    display_path,
    route,
)
from .._progress import Progress
from .._report import Failure, MigrationReport, Skipped
from .._scripts import Capabilities
from .._tarbatch import MAX_MEMBER_SIZE, Batcher
from .._tasks import with_helpers
from .._walk import walk
from . import meta, resume, stream, tar
from .context import (
    DEFAULT_CONCURRENCY,
    DEFAULT_STALL_TIMEOUT,
    FATAL_ERRORS,
    MIGRATED_SUFFIX,
    Context,
    Deadlined,
    Ledger,
    Options,
    Verify,
    check_options,
    control_timeout,
    norm_dest,
    plain,
)
from .preflight import already_migrated, check_source, real_source, source_identity, source_state
from .resume import itemize_line

if TYPE_CHECKING:
    from .._client import Client, FileEntry

#: Walk entries buffered between the walk thread and the dispatcher.
WALK_BUFFER = 1024
#: A tar batch with at least this many files copied gets its own metadata Exec as soon as it
#: is done (fewer: they join the next metadata batch).
TAR_META_MIN = 64
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
        self.identity = source_identity(src)
        self.opts = opts
        self.itemize = itemize
        # Control calls (ListDir, Mkdir, Rename, DeleteFile, Exec) get a deadline derived from
        # the stall timeout; WriteRaw has its own progress-based stall detection.
        if opts.stall_timeout is not None:
            client = cast("Client", Deadlined(client, control_timeout(opts.stall_timeout)))
        self.ledger = Ledger(MigrationReport(source=src, dest=opts.dest), progress)
        self.ctx = Context(client, opts, self.ledger, trio.CapacityLimiter(opts.concurrency))
        self.report = self.ledger.report
        self.existing: dict[str, FileEntry] = {}
        self.dest_links: set[str] = set()  # symlinks found at the destination (resume listing)
        self.tar_max_size = 0  # MAX_MEMBER_SIZE once the container was found to take tar
        self.batcher: Batcher[Action] = Batcher()
        self.caps = Capabilities()  # probed once at the start of a real run
        self._python_known = trio.Event()  # set once caps.python3 is known
        self.pending_links: list[Action] = []
        self.pending_hash: list[Action] = []  # resume skips them if the hashes agree
        self.pending_meta: list[Action] = []  # files: mode + mtime
        self.dir_meta: list[Action] = []  # directories: applied last, deepest first
        self._nursery: trio.Nursery | None = None  # the copy nursery, while it runs

    async def run(self) -> MigrationReport:
        ledger, opts = self.ledger, self.opts
        start = time.monotonic()
        try:
            if opts.dry_run:
                # Ask the container as the real run would (a wrong token fails here too), and
                # count what resume would not resend; delete nothing.
                await self._check_dest()
                existing = await resume.load_existing(self.ctx, clean=False)
                self.existing = existing if opts.resume else {}
            else:
                if opts.dest:
                    await self._make_dest()
                # Listed even without resume: the symlinks already at the destination are what
                # the WriteRaw path must never write through (a server that does not confine
                # paths, like Memoh's, would follow them).
                existing = await resume.load_existing(self.ctx)
                self.dest_links = {rel for rel, e in existing.items() if e.mode.startswith("L")}
                self.existing = existing if opts.resume else {}
                # python3 is asked beside the copy (see _probe_python): its start-up was most
                # of the probe's 65-100 ms, before the first batch could start.
                self.caps = await meta.probe(self.ctx, python=False)
                if opts.tar_batches and self.caps.tar_ok(opts.verify):
                    self.tar_max_size = MAX_MEMBER_SIZE
            helpers = [] if opts.dry_run or not opts.rename else [self._writeback]
            await with_helpers(self._copy_tree, helpers)
            if not opts.dry_run and ledger.fatal is None:
                await self._finish_meta()
                if opts.rename and ledger.done and not self.report.failures:
                    why = await meta.flush(self.ctx)
                    if why is not None:
                        self.report.failures.append(Failure(opts.dest or "/", why))
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
            self.report.seconds = time.monotonic() - start
            ledger.progress.finish()
        if ledger.fatal is not None:
            raise self._fatal_error()
        return self.report

    async def _make_dest(self) -> None:
        try:
            await self.ctx.client.mkdir(self.opts.dest)
        except FATAL_ERRORS:
            raise
        except RPCError as exc:
            await self._check_dest()
            raise ConfigError(f"cannot create the destination {self.opts.dest!r} in the "
                              f"container: {plain(exc)}") from None

    async def _check_dest(self) -> None:
        """Raise :class:`ConfigError` when the destination exists and is not a directory."""
        if not self.opts.dest:
            return
        try:
            entry = await self.ctx.client.stat(self.opts.dest)
        except FATAL_ERRORS:
            raise
        except RPCError:
            return  # missing (created by the run) or not statable: the run will tell
        if not entry.is_dir:
            raise ConfigError(f"destination {self.opts.dest!r} is a file in the container, not "
                              "a directory: choose another --dest")

    def _fatal_error(self) -> RPCError:
        exc = self.ledger.fatal
        assert exc is not None
        what = ("lost the connection to the container"
                if isinstance(exc, Unavailable) else "the container refused our credentials")
        message = (f"{what} ({plain(exc)}); stopped: {self.report.files} files copied, "
                   f"{len(self.report.failures)} failed, source {self.src} kept (not renamed)")
        return type(exc)(message, method=exc.method)

    @trio.lowlevel.enable_ki_protection
    def _finalize(self) -> None:
        """Decide and rename, with no checkpoint (and no KeyboardInterrupt) in between."""
        ledger = self.ledger
        decision = decide(Outcome(
            rename_requested=self.opts.rename and not self.opts.dry_run,
            dry_run=self.opts.dry_run,
            walk_complete=ledger.walk_complete,
            cancelled=ledger.cancelled,
            fatal=None if ledger.fatal is None else plain(ledger.fatal),
            required=ledger.required,
            done=ledger.done,
            failures=len(self.report.failures),
        ))
        self.report.status = decision.status
        if decision.status == "incomplete":
            self.report.error = decision.reason
        if not decision.rename:
            return
        target = self.src + MIGRATED_SUFFIX
        if source_identity(self.src) != self.identity:
            self.report.status = "incomplete"
            self.report.error = (f"everything was copied, but {self.src} no longer names the "
                                 "directory that was copied (it was replaced during the run): "
                                 "not renamed")
            return
        try:
            os.rename(self.src, target)
        except OSError as exc:
            self.report.status = "incomplete"
            self.report.error = (f"everything was copied, but renaming the source to {target} "
                                 f"failed: {describe_os_error(exc)}")
            return
        self.report.renamed_to = target

    # ------------------------------------------------------------------ the copy nursery

    async def _writeback(self) -> None:
        await meta.writeback(self.ctx)

    async def _copy_tree(self) -> None:
        send, recv = trio.open_memory_channel[WalkEntry](WALK_BUFFER)
        streams, stream_queue = trio.open_memory_channel[Action](STREAM_QUEUE)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.ledger.attach(nursery.cancel_scope)
                nursery.start_soon(self._walk, send)
                nursery.start_soon(self._feed_streams, stream_queue, nursery)
                if self.caps.probed and not self._python_known.is_set():
                    nursery.start_soon(self._probe_python)
                else:
                    self._python_known.set()
                async with streams, recv:
                    async for entry in recv:
                        await self._dispatch(classify(entry), streams, nursery)
                    if not self.opts.dry_run:
                        self._flush_links(force=True)
                        self._flush_hashes(force=True)
                        if len(self.batcher):
                            await self._start_tar(self.batcher.take(), nursery)
        finally:
            self._nursery = None
            self.ledger.detach()
        if nursery.cancel_scope.cancelled_caught:
            self.ledger.cancelled = self.ledger.fatal is None

    async def _py_move(self) -> str | None:
        """How to run python3 to move a tar batch, or ``None`` (asked once it is unpacked)."""
        await self._python_known.wait()
        return self.caps.python_exe if meta.USE_PYTHON_META and self.caps.python3 else None

    async def _probe_python(self) -> None:
        try:
            python3, exe = await meta.probe_python(self.ctx)
        except FATAL_ERRORS as exc:
            self.ledger.lose(exc)
            return
        self.caps = replace(self.caps, python3=python3, python_exe=exe)
        self._python_known.set()

    async def _walk(self, send: trio.MemorySendChannel[WalkEntry]) -> None:
        await walk(self.src, send)
        self.ledger.walk_complete = True
        self.ledger.progress.scan_finished()

    async def _feed_streams(self, queue: trio.MemoryReceiveChannel[Action],
                            nursery: trio.Nursery) -> None:
        """Start each queued entry's stream once the limiter has a slot for it."""
        async with queue:
            async for action in queue:
                token = object()
                await self.ctx.limiter.acquire_on_behalf_of(token)
                nursery.start_soon(self._entry_task, action, token)

    async def _dispatch(self, action: Action, streams: trio.MemorySendChannel[Action],
                        nursery: trio.Nursery) -> None:
        ledger, report = self.ledger, self.report
        if action.kind in REQUIRED_KINDS:
            ledger.required += 1
        if action.kind in (Kind.COPY, Kind.CREATE):
            ledger.progress.found(1, action.size)
        where = route(action, dry_run=self.opts.dry_run,
                      unchanged=resume.unchanged(self.existing, action),
                      tar_max_size=self.tar_max_size)
        link = (symlink_on_the_way(action.rel, self.dest_links)
                if self.dest_links and where not in (Route.FAIL, Route.SKIP, Route.DRY) else None)
        if link is not None:
            # WriteRaw/Mkdir/Rename on a server without confinement (Memoh's) would write
            # through it; the scripts refuse it too. Nothing is done for this entry.
            ledger.fail(action, f"a symlink is in the way at the destination: {link}")
        elif where is Route.FAIL:
            if action.rel == "":  # the root itself could not be listed
                ledger.walk_complete = False
            ledger.fail(action, action.reason)
        elif where is Route.SKIP:
            report.skipped.append(Skipped(display_path(action.rel), action.reason))
        elif where is Route.DIR:
            if self.opts.dry_run:
                self._itemize(action)
            elif self.opts.preserve:
                self.dir_meta.append(action)
        elif where is Route.DRY:
            self._count_dry(action)
        elif where is Route.LINK:
            self.pending_links.append(action)
            self._flush_links()
        elif where is Route.UNCHANGED:
            if self.opts.verify == "sha256":  # vouched for only once the hashes agree
                self.pending_hash.append(action)
                self._flush_hashes()
            else:
                self._unchanged(action)
        elif where is Route.TAR:
            full = self.batcher.add(action, action.size, action.rel)
            if full:
                await self._start_tar(full, nursery)
        else:
            if action.kind is Kind.MKDIR and self.opts.preserve:
                self.dir_meta.append(action)
            await streams.send(action)

    def _unchanged(self, action: Action) -> None:
        self.ledger.done += 1
        self.report.unchanged += 1
        self.ledger.progress.file_done(action.size)
        self._queue_meta(action)

    def _count_dry(self, action: Action) -> None:
        report = self.report
        self.ledger.done += 1
        if action.kind in (Kind.COPY, Kind.CREATE) and resume.unchanged(self.existing, action):
            report.unchanged += 1
            return
        self._itemize(action)
        if action.kind in (Kind.COPY, Kind.CREATE):
            report.files += 1
            report.bytes += action.size
        elif action.kind is Kind.MKDIR:
            report.dirs += 1
        elif action.kind is Kind.SYMLINK:
            report.symlinks += 1

    def _itemize(self, action: Action) -> None:
        if self.itemize is not None:
            self.itemize(itemize_line(action, self.existing.get(action.rel)))

    # ------------------------------------------------------------------ tasks

    async def _entry_task(self, action: Action, token: object) -> None:
        try:
            await self._copy_entry(action)
        finally:
            self.ctx.limiter.release_on_behalf_of(token)

    async def _copy_entry(self, action: Action) -> None:
        """Mkdir or copy one entry through its own RPCs and record the outcome."""
        ledger = self.ledger
        try:
            if action.kind is Kind.MKDIR:
                await self.ctx.client.mkdir(self.ctx.path(action.rel))
                self.report.dirs += 1
                ledger.done += 1
                return
            why = await stream.copy_file(self.ctx, action)
        except FATAL_ERRORS as exc:
            ledger.lose(exc)
            return
        except (MemohError, OSError) as exc:
            why = plain(exc)
        except Exception as exc:  # a bug below us fails this entry, not the whole run
            why = f"unexpected error: {type(exc).__name__}: {exc}"
        if why is not None:
            ledger.fail(action, why)
            return
        ledger.copied(action)
        self._queue_meta(action)

    async def _start_tar(self, batch: list[Action], nursery: trio.Nursery) -> None:
        token = object()
        await self.ctx.limiter.acquire_on_behalf_of(token)
        nursery.start_soon(self._tar_task, batch, token)

    async def _tar_task(self, batch: list[Action], token: object) -> None:
        ledger = self.ledger
        try:
            try:
                outcome = await tar.send_batch(self.ctx, batch, py_move=self._py_move)
            except FATAL_ERRORS as exc:
                ledger.lose(exc)
                return
            except Exception as exc:  # a bug below us fails these entries, not the whole run
                for action in batch:
                    ledger.fail(action, f"unexpected error: {type(exc).__name__}: {exc}")
                return
            for action, why in outcome.failed:
                ledger.fail(action, why)
            ledger.copied_many(outcome.copied)
            if outcome.meta_applied:
                # The python3 mover applied them, each file's record proves it.
                if outcome.copied and self.report.mtime_precision != "s":
                    self.report.mtime_precision = "ns"
            elif self.opts.preserve and len(outcome.copied) >= TAR_META_MIN:
                # This batch's modes and mtimes at once, while the rest is still being sent,
                # rather than all at the end (mixed tree: 0.22 s after the last move, on the
                # critical path).
                self._start_batch(list(outcome.copied), "meta")
            else:
                for action in outcome.copied:
                    self._queue_meta(action)
            # A file that changed while read goes the per-file way (which fails it if it keeps
            # changing, or copies the new contents).
            for action in outcome.changed:
                await self._copy_entry(action)
        finally:
            self.ctx.limiter.release_on_behalf_of(token)

    # ------------------------------------------------------------------ batched Exec work

    def _queue_meta(self, action: Action) -> None:
        if not self.opts.preserve:
            return
        self.pending_meta.append(action)
        if len(self.pending_meta) >= meta.EXEC_BATCH:
            batch, self.pending_meta = self.pending_meta, []
            self._start_batch(batch, "meta")

    def _flush_links(self, *, force: bool = False) -> None:
        if self.pending_links and (force or len(self.pending_links) >= meta.EXEC_BATCH):
            batch, self.pending_links = self.pending_links, []
            self._start_batch(batch, "links")

    def _flush_hashes(self, *, force: bool = False) -> None:
        if self.pending_hash and (force or len(self.pending_hash) >= meta.EXEC_BATCH):
            batch, self.pending_hash = self.pending_hash, []
            self._start_batch(batch, "hash")

    def _start_batch(self, batch: list[Action], what: str) -> None:
        assert self._nursery is not None, "batches start only while the copy runs"
        self._nursery.start_soon(self._batch_task, batch, what)

    async def _batch_task(self, batch: list[Action], what: str) -> None:
        async with self.ctx.limiter:
            try:
                await self._python_known.wait()
                if what == "hash":
                    found = await resume.check_hashes(self.ctx, batch)
                    for action in found.same:
                        self._unchanged(action)
                    for action in found.resend:  # with this task's slot, one after another
                        await self._copy_entry(action)
                elif what == "links":
                    failed = await meta.recreate_links(self.ctx, self.caps, batch)
                    for i, action in enumerate(batch):
                        if i in failed:
                            self.ledger.fail(action, f"cannot recreate the symlink: {failed[i]}")
                        else:
                            self.ledger.done += 1
                            self.report.symlinks += 1
                else:
                    await self._apply_meta(batch)
            except FATAL_ERRORS as exc:
                self.ledger.lose(exc)

    async def _finish_meta(self) -> None:
        """Apply the modes and mtimes still pending, in one Exec per batch: files finished after
        the last full batch, then directories, deepest first, once nothing is written in them
        (a file's chmod/utime does not touch its directory's mtime)."""
        files, self.pending_meta = self.pending_meta, []
        dirs = sorted(self.dir_meta, key=lambda a: a.rel.count("/"), reverse=True)
        self.dir_meta = []
        entries = files + dirs
        for i in range(0, len(entries), meta.EXEC_BATCH):
            await self._apply_meta(entries[i:i + meta.EXEC_BATCH])

    async def _apply_meta(self, batch: list[Action]) -> None:
        failed, precision = await meta.apply_meta(self.ctx, self.caps, batch)
        if self.report.mtime_precision != "s":  # the coarsest precision any batch used
            self.report.mtime_precision = precision
        for i, reason in failed.items():
            self.ledger.fail(batch[i], f"cannot apply permissions/mtime: {reason}")


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
    opts = Options(dest=norm_dest(dest), concurrency=concurrency, chunk_size=chunk_size,
                   verify=verify, preserve=preserve, rename=rename, dry_run=dry_run,
                   resume=resume, stall_timeout=stall_timeout, tar_batches=tar_batches)
    check_options(opts)
    progress = progress if progress is not None else Progress()
    # SRC by its real directory: an alias (or a symlinked parent) meets the same lock, and the
    # rename renames the real directory (see check_source).
    absolute, state = source_state(real_source(src))  # reruns, typos, empty sources: see .preflight
    if state != "migrate":
        progress.finish()
        return MigrationReport(source=absolute, dest=opts.dest, status=state)
    path = check_source(src)
    if opts.dry_run:  # changes nothing, so takes no lock (works on a read-only data root)
        return await _Run(path, client, opts, progress, itemize).run()
    async with single_flight(path, wait=lock_wait):
        if already_migrated(path):  # the run we waited for renamed it
            progress.finish()
            return MigrationReport(source=path, dest=opts.dest, status="already-migrated")
        check_source(path)
        return await _Run(path, client, opts, progress, itemize).run()
