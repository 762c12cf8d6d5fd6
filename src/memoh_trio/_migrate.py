"""The migrator: copy a tree into a container; rename the source only if all of it made it.

How one :func:`migrate` runs:

1. The source is checked (:func:`check_source`) and the single-flight lock next to it is taken
   (:mod:`memoh_trio._lock`).
2. Resume: one recursive ``ListDir`` of the destination up front gives what is already there
   (rsync's quick check: same size and same mtime second → not resent). Stale temporary files of
   an earlier interrupted run are deleted.
3. The walk (:mod:`memoh_trio._walk`) streams entries from a worker thread into a channel; each
   entry is classified by pure code (:func:`memoh_trio._plan.classify`) and dispatched: small
   files into tar batches, the others into a bounded queue of file streams. A
   ``CapacityLimiter`` bounds the streams and batches in flight; a feeder task waits for a slot
   before starting the next stream, so neither tasks nor memory grow with the tree, and the walk
   is never held up by large files while small ones could already be batched.
4. Each file goes to a temporary sibling name through ``WriteRaw`` (size pinned to the size seen at
   ``lstat`` time; optional SHA-256 computed while reading), is verified (bytes read ==
   bytes written == size; the source unchanged since; with ``verify="sha256"`` the container's hash
   of the temporary file), and only then moved onto its final name with ``Rename``. On any failure
   or cancellation the temporary file is deleted (shielded, bounded in time). So no final path
   ever holds a partial file, even against a server that writes in place.
5. Symlinks are recreated and permission bits / mtimes applied in the container through batched
   ``Exec`` calls (one shell script per batch, not one RPC per entry); directories last, deepest
   first, once nothing more is written into them.
6. After the copy nursery has exited, :func:`memoh_trio._finalize.decide` rules on the rename and
   ``os.rename`` follows with no checkpoint in between (and KeyboardInterrupt-protected), so a
   cancellation, an interrupt or a fatal error can never reach the rename after a partial copy.

Error handling:
    A per-entry problem (unreadable file, file changed while copied, server refused a write,
    stalled stream) becomes a :class:`~memoh_trio._report.Failure` in the report; the others go on
    and the source is not renamed. A lost connection (:class:`~memoh_trio._errors.Unavailable`) or
    a refused credential (:class:`~memoh_trio._errors.Unauthenticated`) is fatal: the remaining
    work is cancelled promptly and that one error is raised. Bad arguments raise
    :class:`~memoh_trio._errors.ConfigError`, a bad source :class:`~memoh_trio._errors.SourceError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import posixpath
import secrets
import shlex
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import trio

from ._client import _with_helpers
from ._errors import (
    ConfigError,
    InvalidArgument,
    MemohError,
    NotFound,
    RPCError,
    SourceError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from ._finalize import Decision, Outcome, decide
from ._lock import single_flight
from ._plan import (
    REQUIRED_KINDS,
    Action,
    Kind,
    WalkEntry,
    classify,
    describe_os_error,
    display_path,
)
from ._progress import Progress
from ._report import Failure, MigrationReport, Skipped
from ._tarbatch import (
    MAX_MEMBER_SIZE,
    TAR_FAILED_EXIT,
    TAR_PREFIX,
    Batcher,
    Member,
    extract_script,
    layout,
    move_script,
    pack,
    parse_failed_groups,
    parse_listing,
    probe_script,
)
from ._walk import walk

if TYPE_CHECKING:
    from ._client import Client, FileEntry

#: File streams in flight at once. Measured on 2 cores (see the closing note of issue 3).
DEFAULT_CONCURRENCY = 8
#: Bots migrated at once by :func:`migrate_all`.
DEFAULT_BOT_CONCURRENCY = 4
#: Suffix of a migrated source (the seed's ``migratedSuffix``).
MIGRATED_SUFFIX = ".migrated"
#: Prefix of the client-side temporary sibling a file is uploaded to before its Rename. Distinct
#: from the server's own ``.memoh-tmp-`` so the two never collide.
PART_PREFIX = ".memoh-part-"
#: memoh-trio's server writes uploads to ``.memoh-tmp-*`` siblings; a server killed mid-stream
#: (SIGKILL) leaves them behind, and the resume pass removes them like our own parts.
SERVER_TEMP_PREFIX = ".memoh-tmp-"
#: A stream with no progress for this long fails (the migration never hangs by default).
DEFAULT_STALL_TIMEOUT = 60.0
#: Walk entries buffered between the walk thread and the dispatcher.
WALK_BUFFER = 1024
#: Files waiting for a stream slot. The dispatcher only blocks once this many are queued, so
#: small files found behind a run of large ones are batched (and their tar batch started) while
#: the large ones stream: on the mixed tree (c) the batches began at 0.34-0.44 s, after the
#: large files, when the dispatcher waited for a slot for each large file in walk order.
STREAM_QUEUE = 4096
#: Entries per batched Exec (symlinks, permissions and mtimes): keeps each script well below
#: the message size limit (a 4 KiB path quoted twice per entry, 1000 entries ~ 8 MiB worst case).
EXEC_BATCH = 1000
#: Timeout given to the server for each batched Exec, in seconds.
EXEC_TIMEOUT = 300
#: Early writeback: while files are being sent, the container is asked to ``sync`` each time
#: this many more bytes went out, so the ``sync`` that must precede the rename only has the tail
#: left to flush (it took a third of a 2 x 128 MiB migration when it flushed everything at the
#: end). Best effort: a failed early ``sync`` is ignored; the final one decides.
WRITEBACK_BYTES = 32 * 1024 * 1024
#: Seconds allowed to delete a temporary file after a failure (shielded from cancellation).
CLEANUP_TIMEOUT = 5.0
#: Pause between attempts to delete a staging directory a cancelled Exec may still write into.
CLEANUP_RETRY = 0.05
#: Apply modes/mtimes with one python3 process per batch when the container has python3 (else
#: one shell ``chmod`` + ``touch`` per entry). A switch so tests can exercise both paths.
USE_PYTHON_META = True
#: Batches of at most this many entries use the shell (a chmod and a touch per entry, ~1-2 ms
#: each) even where python3 exists: its start-up (20 ms for a plain /usr/bin/python3, 80+ ms
#: behind a pyenv shim) costs more than a few processes.
SHELL_META_MAX = 8
#: Errors that doom every remaining file: cancel the run and raise them.
FATAL_ERRORS: tuple[type[RPCError], ...] = (Unavailable, Unauthenticated)

Verify = Literal["size", "sha256"]


def control_timeout(stall_timeout: float) -> float:
    """Deadline of one control call: ten stall timeouts, at least 10 s (pure)."""
    return max(10.0 * stall_timeout, 10.0)


class _Deadlined:
    """A client whose calls, except ``write_raw``, fail as Unavailable past a deadline.

    A connection that stalls (a dead peer behind a live TCP path) would otherwise hang a control
    call forever; Unavailable is fatal to the run, which then stops promptly with one error.
    """

    def __init__(self, client: Client, seconds: float) -> None:
        self._client = client
        self._seconds = seconds

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name == "write_raw" or not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            try:
                with trio.fail_after(self._seconds):
                    return await attr(*args, **kwargs)
            except trio.TooSlowError:
                raise Unavailable(
                    f"no answer from the container within {self._seconds:g} s",
                    method=name) from None

        return call


class ClientSource(Protocol):
    """Anything with ``async get(bot_id) -> Client``, such as :class:`memoh_trio.Pool`."""

    async def get(self, bot_id: str) -> Client: ...


# --------------------------------------------------------------------------- checks


def check_source(src: str | os.PathLike[str]) -> str:
    """Check that ``src`` is a readable directory; return its absolute path.

    Raises:
        SourceError: missing, not a directory, or unreadable (in plain words).
    """
    path = os.path.abspath(os.fspath(src))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SourceError(f"source {path} does not exist") from None
    except OSError as exc:
        raise SourceError(f"cannot read source {path}: {describe_os_error(exc)}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(f"source {path} is not a directory")
    try:
        with os.scandir(path) as it:
            next(it, None)
    except OSError as exc:
        raise SourceError(f"cannot read source {path}: {describe_os_error(exc)}") from None
    return path


def _check_options(concurrency: int, chunk_size: int | None, verify: str,
                   stall_timeout: float | None) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"concurrency must be a whole number of at least 1, got {concurrency!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ConfigError(f"chunk size must be a positive number of bytes, got {chunk_size!r}")
    if verify not in ("size", "sha256"):
        raise ConfigError(f"verify must be 'size' or 'sha256', got {verify!r}")
    if stall_timeout is not None and not stall_timeout > 0:
        raise ConfigError(f"stall timeout must be positive, got {stall_timeout!r}")


def _norm_dest(dest: str) -> str:
    d = posixpath.normpath("/" + dest.replace(os.sep, "/")).lstrip("/")
    return "" if d in (".", "") else d


def _join(dest: str, rel: str) -> str:
    return f"{dest}/{rel}" if dest else rel


def _part_name(final: str) -> str:
    """The temporary sibling of a final path (short, so 255-byte names still fit)."""
    parent = posixpath.dirname(final)
    name = PART_PREFIX + secrets.token_hex(8)
    return f"{parent}/{name}" if parent else name


def _mtime_seconds(mod_time: str) -> int | None:
    """Whole seconds of a ListDir ``mod_time`` (RFC 3339), ``None`` if unparsable."""
    try:
        return math.floor(datetime.fromisoformat(mod_time.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def _shell_path(rel: str) -> str:
    """A relative path as a shell word that can never be read as an option."""
    return shlex.quote("./" + rel)


def _source_unchanged(action: Action) -> str | None:
    """``None`` if the file still has the size and mtime seen by the walk, else why not."""
    try:
        st = os.lstat(action.host_path)
    except OSError as exc:
        return f"the file changed while being copied ({describe_os_error(exc)})"
    if not stat.S_ISREG(st.st_mode) or st.st_size != action.size:
        return "the file changed while being copied (its size or type changed)"
    if st.st_mtime_ns != action.mtime_ns:
        return "the file changed while being copied (it was modified)"
    return None


def _plain(exc: BaseException) -> str:
    """An error in plain words for the report."""
    if isinstance(exc, RPCError):
        text = exc.message or exc.status.name.replace("_", " ").lower()
        if isinstance(exc, Unimplemented):
            return f"the server does not support this: {text}"
        return text
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------- one run


class _Run:
    """State of one :func:`migrate` call (see the module docstring for the flow)."""

    def __init__(self, src: str, client: Client, *, dest: str, concurrency: int,
                 chunk_size: int | None, verify: Verify, preserve: bool, rename: bool,
                 dry_run: bool, resume: bool, progress: Progress,
                 stall_timeout: float | None, tar_batches: bool = True) -> None:
        self.src = src
        # Control calls (ListDir, Mkdir, Rename, DeleteFile, Exec) get a deadline derived from
        # the stall timeout; WriteRaw has its own progress-based stall detection.
        self.client: Client = (
            client if stall_timeout is None
            else cast("Client", _Deadlined(client, control_timeout(stall_timeout)))
        )
        self.dest = dest
        self.concurrency = concurrency
        self.chunk_size = chunk_size
        self.verify = verify
        self.preserve = preserve
        self.rename = rename
        self.dry_run = dry_run
        self.resume = resume
        self.progress = progress
        self.stall_timeout = stall_timeout
        self.report = MigrationReport(source=src, dest=dest)
        self.required = 0
        self.done = 0
        self.walk_complete = False
        self.fatal: RPCError | None = None
        self.cancelled = False
        self.existing: dict[str, FileEntry] = {}
        self.limiter = trio.CapacityLimiter(concurrency)
        self.pending_links: list[Action] = []
        self.pending_meta: list[Action] = []  # files (and links' nothing): mode + mtime
        self.dir_meta: list[Action] = []  # directories: applied last, deepest first
        self.has_python: bool | None = None
        self.tar_batches = tar_batches
        self.tar_ok = False  # probed once per run (see _probe_tar)
        self.batcher: Batcher[Action] = Batcher()
        self.copy_nursery: trio.Nursery | None = None  # while the copy runs

    # ------------------------------------------------------------------ bookkeeping

    def _fail(self, action_or_rel: Action | str, error: str) -> None:
        rel = action_or_rel.rel if isinstance(action_or_rel, Action) else action_or_rel
        self.report.failures.append(Failure(display_path(rel) or ".", error))
        self.progress.failed()

    def _fatal(self, exc: RPCError, nursery: trio.Nursery) -> None:
        if self.fatal is None:
            self.fatal = exc
        nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ main

    async def run(self) -> MigrationReport:
        start = time.monotonic()
        try:
            if not self.dry_run:
                if self.dest:
                    await self.client.mkdir(self.dest)
                if self.resume:
                    await self._load_existing()
                if self.tar_batches:
                    self.tar_ok = await self._probe_tar()
            await self._copy_all()
            if not self.dry_run and self.fatal is None:
                await self._finish_meta()
                await self._flush()
            # Checkpoint: any pending cancellation surfaces here, before the decision.
            await trio.lowlevel.checkpoint()
            self._finalize()
        except trio.Cancelled:
            self.cancelled = True
            raise
        except RPCError as exc:
            if isinstance(exc, FATAL_ERRORS):
                self.fatal = exc
            else:
                self.report.error = _plain(exc)
            if self.fatal is not None:
                raise self._fatal_error() from exc
            self.report.status = "incomplete"
        finally:
            self.report.seconds = time.monotonic() - start
            self.progress.finish()
        if self.fatal is not None:
            raise self._fatal_error()
        return self.report

    def _fatal_error(self) -> RPCError:
        assert self.fatal is not None
        exc = self.fatal
        what = ("lost the connection to the container"
                if isinstance(exc, Unavailable) else "the container refused our credentials")
        message = (f"{what} ({_plain(exc)}); stopped: {self.report.files} files copied, "
                   f"{len(self.report.failures)} failed, source {self.src} kept (not renamed)")
        return type(exc)(message, method=exc.method)

    @trio.lowlevel.enable_ki_protection
    def _finalize(self) -> None:
        """Decide and rename, with no checkpoint (and no KeyboardInterrupt) in between."""
        decision: Decision = decide(Outcome(
            rename_requested=self.rename and not self.dry_run,
            walk_complete=self.walk_complete,
            cancelled=self.cancelled,
            fatal=None if self.fatal is None else _plain(self.fatal),
            required=self.required,
            done=self.done,
            failures=len(self.report.failures),
        ))
        if decision.rename:
            target = self.src + MIGRATED_SUFFIX
            try:
                os.rename(self.src, target)
            except OSError as exc:
                self.report.status = "incomplete"
                self.report.error = (f"everything was copied, but renaming the source to {target} "
                                     f"failed: {describe_os_error(exc)}")
                return
            self.report.renamed_to = target
            self.report.status = "migrated"
            return
        if self.dry_run and not self.report.failures and self.walk_complete:
            self.report.status = "dry-run"
        elif (not self.rename and not self.report.failures and self.walk_complete
              and self.done == self.required):
            self.report.status = "migrated"
        else:
            self.report.status = "incomplete"
            self.report.error = decision.reason

    async def _load_existing(self) -> None:
        """Resume's quick-check index, and cleanup of stale temporary files."""
        try:
            entries = await self.client.list_dir(self.dest, recursive=True)
        except FATAL_ERRORS:
            raise
        except RPCError:  # missing destination, or a listing too big for one message: no resume
            return
        stale: list[str] = []
        staging: set[str] = set()
        for e in entries:
            rel = e.path.lstrip("/")
            top = rel.split("/", 1)[0]
            if top.startswith(TAR_PREFIX):  # staging dir of an interrupted tar batch
                staging.add(top)
            elif posixpath.basename(rel).startswith((PART_PREFIX, SERVER_TEMP_PREFIX)):
                stale.append(rel)
            elif not e.is_dir:
                self.existing[rel] = e
        for rel in stale + sorted(staging):
            with trio.move_on_after(CLEANUP_TIMEOUT):
                with contextlib.suppress(MemohError):
                    await self.client.delete_file(_join(self.dest, rel), recursive=rel in staging)

    def _unchanged(self, action: Action) -> bool:
        e = self.existing.get(action.rel)
        if e is None or e.is_dir or e.size != action.size:
            return False
        return _mtime_seconds(e.mod_time) == action.mtime_ns // 1_000_000_000

    async def _copy_all(self) -> None:
        helpers = [] if self.dry_run or self.rename is False else [self._writeback]
        await _with_helpers(self._copy_tree, helpers)

    async def _writeback(self) -> None:
        """Early ``sync`` every :data:`WRITEBACK_BYTES` sent (runs beside the copy)."""
        mark = WRITEBACK_BYTES
        while True:
            await self.progress.value.wait_value(lambda s, m=mark: s.bytes_done >= m)
            try:
                await self.client.exec("sync", work_dir=self.dest, timeout_seconds=EXEC_TIMEOUT)
            except (MemohError, OSError):
                return  # no Exec, or it failed: the final sync reports what matters
            mark = self.progress.state.bytes_done + WRITEBACK_BYTES

    async def _copy_tree(self) -> None:
        send, recv = trio.open_memory_channel[WalkEntry](WALK_BUFFER)
        streams, stream_queue = trio.open_memory_channel[Action](STREAM_QUEUE)
        async with trio.open_nursery() as nursery:
            self.copy_nursery = nursery
            nursery.start_soon(self._walk, send)
            nursery.start_soon(self._feed_streams, stream_queue, nursery)
            async with streams, recv:
                async for entry in recv:
                    await self._dispatch(classify(entry), streams, nursery)
                if not self.dry_run:
                    self._flush_links(nursery, force=True)
                    if len(self.batcher):
                        await self._start_tar(self.batcher.take(), nursery)
        self.copy_nursery = None
        if nursery.cancel_scope.cancelled_caught:
            self.cancelled = self.fatal is None

    async def _feed_streams(self, queue: trio.MemoryReceiveChannel[Action],
                            nursery: trio.Nursery) -> None:
        """Start each queued entry's stream once the limiter has a slot for it."""
        async with queue:
            async for action in queue:
                token = object()
                await self.limiter.acquire_on_behalf_of(token)
                nursery.start_soon(self._entry_task, action, token, nursery)

    async def _walk(self, send: trio.MemorySendChannel[WalkEntry]) -> None:
        await walk(self.src, send)
        self.walk_complete = True
        self.progress.scan_finished()

    async def _dispatch(self, action: Action, streams: trio.MemorySendChannel[Action],
                        nursery: trio.Nursery) -> None:
        kind = action.kind
        if kind in REQUIRED_KINDS:
            self.required += 1
        if kind is Kind.FAIL:
            if action.rel == "":  # the root itself could not be listed
                self.walk_complete = False
            self._fail(action, action.reason)
            return
        if kind is Kind.SKIP:
            self.report.skipped.append(Skipped(display_path(action.rel), action.reason))
            return
        if kind is Kind.DIR:
            if self.preserve:
                self.dir_meta.append(action)
            return
        if kind in (Kind.COPY, Kind.CREATE):
            self.progress.found(1, action.size)
        if self.dry_run:
            self._count_dry(action)
            return
        if kind is Kind.SYMLINK:
            self.pending_links.append(action)
            self._flush_links(nursery)
            return
        if kind is Kind.MKDIR:
            if self.preserve:
                self.dir_meta.append(action)
        elif self._unchanged(action):
            self.done += 1
            self.report.unchanged += 1
            self.progress.file_done(action.size)
            if self.preserve:
                self._queue_meta(action, nursery)
            return
        if kind is Kind.COPY and self.tar_ok and action.size <= MAX_MEMBER_SIZE:
            full = self.batcher.add(action, action.size, action.rel)
            if full:
                await self._start_tar(full, nursery)
            return
        await streams.send(action)

    def _count_dry(self, action: Action) -> None:
        if action.kind in (Kind.COPY, Kind.CREATE):
            self.report.files += 1
            self.report.bytes += action.size
        elif action.kind is Kind.MKDIR:
            self.report.dirs += 1
        elif action.kind is Kind.SYMLINK:
            self.report.symlinks += 1
        self.done += 1

    async def _entry_task(self, action: Action, token: object, nursery: trio.Nursery) -> None:
        try:
            if action.kind is Kind.MKDIR:
                await self.client.mkdir(_join(self.dest, action.rel))
                self.report.dirs += 1
                self.done += 1
            else:
                await self._copy_one(action, nursery)
        except FATAL_ERRORS as exc:
            self._fatal(exc, nursery)
        except (MemohError, OSError) as exc:
            self._fail(action, _plain(exc))
        except Exception as exc:  # a bug below us fails this entry, not the whole run
            self._fail(action, f"unexpected error: {type(exc).__name__}: {exc}")
        finally:
            self.limiter.release_on_behalf_of(token)

    async def _copy_one(self, action: Action, nursery: trio.Nursery) -> None:
        """Copy one file through WriteRaw and count it (failures are recorded or raised)."""
        if await self._copy_file(action):
            self._copied(action)
            if self.preserve:
                self._queue_meta(action, nursery)

    def _copied(self, action: Action) -> None:
        self.done += 1
        self.report.files += 1
        self.report.bytes += action.size
        self.progress.file_done()

    # ------------------------------------------------------------------ tar batches

    async def _probe_tar(self) -> bool:
        """Whether the container can take tar batches (Exec, tar and friends): one Exec."""
        try:
            res = await self.client.exec(probe_script(self.verify), work_dir=self.dest,
                                         timeout_seconds=30)
        except FATAL_ERRORS:
            raise
        except (MemohError, OSError):  # no Exec (UNIMPLEMENTED), or no shell
            return False
        return res.exit_code == 0

    async def _start_tar(self, batch: list[Action], nursery: trio.Nursery) -> None:
        token = object()
        await self.limiter.acquire_on_behalf_of(token)
        nursery.start_soon(self._tar_task, batch, token, nursery)

    async def _tar_task(self, batch: list[Action], token: object,
                        nursery: trio.Nursery) -> None:
        pending = list(batch)  # not yet copied nor failed
        try:
            members, changed = await trio.to_thread.run_sync(_read_members, batch)
            # A file that changed while read goes the per-file way (which fails it if it
            # keeps changing, or copies the new contents).
            for action in changed:
                pending.remove(action)
                try:
                    await self._copy_one(action, nursery)
                except FATAL_ERRORS:
                    raise
                except (MemohError, OSError) as exc:
                    self._fail(action, _plain(exc))
            if members:
                await self._send_tar(members, pending, nursery)
        except FATAL_ERRORS as exc:
            self._fatal(exc, nursery)
        except (MemohError, OSError) as exc:
            for action in pending:
                self._fail(action, _plain(exc))
        except Exception as exc:  # a bug below us fails these entries, not the whole run
            for action in pending:
                self._fail(action, f"unexpected error: {type(exc).__name__}: {exc}")
        finally:
            self.limiter.release_on_behalf_of(token)

    async def _send_tar(self, members: list[tuple[Action, bytes, str | None]],
                        pending: list[Action], nursery: trio.Nursery) -> None:
        """Unpack one batch into a staging dir, verify, move the good files into place.

        ``pending`` shrinks as members are settled, so the caller can fail the rest.
        """
        actions = [a for a, _, _ in members]
        lay = layout([a.rel for a in actions])
        payload = pack([Member(a.rel, data, a.mode, a.mtime_ns) for a, data, _ in members], lay,
                       preserve=self.preserve)
        staging = TAR_PREFIX + secrets.token_hex(8)
        nbytes = sum(a.size for a in actions)
        placed = False
        try:
            res = await self.client.exec(extract_script(staging, lay, self.verify,
                                                        preserve=self.preserve),
                                         work_dir=self.dest, timeout_seconds=EXEC_TIMEOUT,
                                         stdin=payload)
            if res.exit_code != 0:
                why = res.stderr.decode("utf-8", "replace").strip() or f"exit {res.exit_code}"
                what = ("cannot unpack the batch in the container"
                        if res.exit_code == TAR_FAILED_EXIT else "the container's shell failed")
                raise _BatchFailed(f"{what}: {why}")
            self.progress.sent(nbytes)
            listing = parse_listing(res.stdout, lay.staged, self.verify)
            good: list[int] = []
            for i, (action, data, digest) in enumerate(members):
                want: int | str | None = len(data) if self.verify == "size" else digest
                got = listing.get(i)
                if got == want:
                    good.append(i)
                    continue
                pending.remove(action)
                self.progress.unsent(action.size)
                if got is None:
                    self._fail(action, "the file is missing from the unpacked batch")
                else:
                    self._fail(action, f"verification failed in the container: expected "
                                       f"{want}, found {got}")
            res = await self.client.exec(move_script(staging, lay, good), work_dir=self.dest,
                                         timeout_seconds=EXEC_TIMEOUT)
            placed = True  # the script removed the staging directory
            failed_groups = parse_failed_groups(res.stdout)
            for i in good:
                action = actions[i]
                pending.remove(action)
                g = int(lay.staged[i].split("/", 1)[0])
                if g in failed_groups:
                    self.progress.unsent(action.size)
                    self._fail(action, f"cannot move the file into place: {failed_groups[g]}")
                elif res.exit_code != 0:
                    self.progress.unsent(action.size)
                    self._fail(action, f"the container's shell failed: exit {res.exit_code}")
                else:
                    self._copied(action)
        except _BatchFailed as exc:
            self.progress.unsent(nbytes)
            for action in pending:
                self._fail(action, str(exc))
            pending.clear()
        finally:
            if not placed:
                await self._discard(staging, recursive=True)

    async def _copy_file(self, action: Action) -> bool:
        """Copy one regular file through a temporary sibling; False if it failed (recorded)."""
        final = _join(self.dest, action.rel)
        if action.kind is Kind.CREATE:
            # Nothing can be partial in an empty file: write it in place.
            result = await self.client.write_raw(final, b"", expected_size=0)
            why = _source_unchanged(action)
            if why is not None:
                self._fail(action, why)
                return False
            return result.bytes_written == 0

        part = _part_name(final)
        sent = 0

        def on_progress(nbytes: int) -> None:
            nonlocal sent
            sent += nbytes
            self.progress.sent(nbytes)

        placed = False
        try:
            result = await self.client.write_raw(
                part, action.host_path, chunk_size=self.chunk_size, expected_size=action.size,
                hash_sha256=self.verify == "sha256", on_progress=on_progress,
                stall_timeout=self.stall_timeout,
            )
            why = _source_unchanged(action)
            if why is None and not (result.bytes_read == result.bytes_written == action.size):
                why = (f"size mismatch: {action.size} bytes at open, {result.bytes_read} read, "
                       f"{result.bytes_written} written by the server")
            if why is None and self.verify == "sha256":
                why = await self._verify_sha256(part, result.sha256)
            if why is not None:
                self._fail(action, why)
                return False
            await self.client.rename(part, final)
            placed = True
            return True
        finally:
            if not placed:
                self.progress.unsent(sent)
                await self._discard(part)

    async def _discard(self, part: str, *, recursive: bool = False) -> None:
        """Delete a temporary file (or staging dir), best effort, even when cancelled."""
        timeout = 1.0 if self.fatal is not None else CLEANUP_TIMEOUT
        path = _join(self.dest, part) if recursive else part
        with trio.CancelScope(shield=True), trio.move_on_after(timeout) as limit:
            while True:
                with contextlib.suppress(MemohError, OSError):
                    await self.client.delete_file(path, recursive=recursive)
                if not recursive:
                    return
                # A staging directory: the Exec cancelled just before may still be running its
                # script in it for a moment (the server kills the script once it sees the
                # cancellation) and write into it after it was deleted (seen: 1 run in 20 of
                # test_cancel_never_renames_and_cleans_up). Delete until it is gone.
                try:
                    await self.client.stat(path)
                except NotFound:
                    return
                except (MemohError, OSError):
                    return  # cannot tell: the next run removes stale staging dirs
                await trio.sleep(CLEANUP_RETRY)
        if limit.cancelled_caught and self.fatal is None and self.copy_nursery is not None:
            # Not one answer in CLEANUP_TIMEOUT: the connection is as good as gone (a stalled
            # stream is a per-file failure, but on a dead link every next file would stall in
            # turn, each with its own cleanup: the soak saw a run go past 60 s that way).
            self._fatal(Unavailable(f"no answer from the container within {timeout:g} s "
                                    f"(deleting {path})", method="DeleteFile"),
                        self.copy_nursery)

    async def _verify_sha256(self, path: str, local: str | None) -> str | None:
        if local is None:
            return "no SHA-256 was computed while reading the source"
        remote: str | None = None
        try:
            res = await self.client.exec(f"sha256sum -- {_shell_path(path)}",
                                         timeout_seconds=EXEC_TIMEOUT)
            if res.exit_code == 0:
                word = res.stdout.split(b" ", 1)[0].decode("ascii", "replace").lstrip("\\")
                if len(word) == 64:
                    remote = word.lower()
        except (Unimplemented, InvalidArgument):
            remote = None
        if remote is None:  # no Exec or no sha256sum in the container: read it back
            h = hashlib.sha256()
            async with self.client.read_raw(path) as chunks:
                async for chunk in chunks:
                    h.update(chunk)
            remote = h.hexdigest()
        if remote != local.lower():
            return f"SHA-256 mismatch: source {local}, container {remote}"
        return None

    # ------------------------------------------------------------------ batched Exec work

    def _queue_meta(self, action: Action, nursery: trio.Nursery) -> None:
        self.pending_meta.append(action)
        self._flush_meta(nursery)

    def _flush_links(self, nursery: trio.Nursery, *, force: bool = False) -> None:
        if self.pending_links and (force or len(self.pending_links) >= EXEC_BATCH):
            batch, self.pending_links = self.pending_links, []
            nursery.start_soon(self._batch_task, batch, "links", nursery)

    def _flush_meta(self, nursery: trio.Nursery, *, force: bool = False) -> None:
        if self.pending_meta and (force or len(self.pending_meta) >= EXEC_BATCH):
            batch, self.pending_meta = self.pending_meta, []
            nursery.start_soon(self._batch_task, batch, "meta", nursery)

    async def _batch_task(self, batch: list[Action], what: str, nursery: trio.Nursery) -> None:
        async with self.limiter:
            try:
                if what == "links":
                    failed = await self._run_script(batch, self._link_lines(batch))
                    for i, action in enumerate(batch):
                        if i in failed:
                            self._fail(action, f"cannot recreate the symlink: {failed[i]}")
                        else:
                            self.done += 1
                            self.report.symlinks += 1
                else:
                    await self._apply_meta(batch)
            except FATAL_ERRORS as exc:
                self._fatal(exc, nursery)

    async def _flush(self) -> None:
        """One ``sync`` in the container before the source may be renamed.

        What the rename vouches for must be on the container's disk, not only in its page cache:
        one Exec for the whole tree, instead of an fsync per file on the server's hot path. A
        server without Exec (UNIMPLEMENTED) cannot be asked; its own durability applies.
        """
        if self.rename is False or not self.done or self.report.failures:
            return
        try:
            res = await self.client.exec("sync", work_dir=self.dest, timeout_seconds=EXEC_TIMEOUT)
        except FATAL_ERRORS:
            raise
        except Unimplemented:
            return
        except (MemohError, OSError) as exc:
            self.report.failures.append(
                Failure(path=self.dest or "/", error=f"cannot flush the container's disk: "
                                                     f"{_plain(exc)}"))
            return
        if res.exit_code != 0:
            why = res.stderr.decode("utf-8", "replace").strip() or f"exit code {res.exit_code}"
            self.report.failures.append(
                Failure(path=self.dest or "/", error=f"cannot flush the container's disk: {why}"))

    async def _finish_meta(self) -> None:
        """Apply the modes and mtimes still pending, in one Exec per batch: files finished after
        the last full batch, then directories, deepest first, once nothing is written in them
        (a file's chmod/utime does not touch its directory's mtime)."""
        files, self.pending_meta = self.pending_meta, []
        dirs = sorted(self.dir_meta, key=lambda a: a.rel.count("/"), reverse=True)
        self.dir_meta = []
        entries = files + dirs
        for i in range(0, len(entries), EXEC_BATCH):
            await self._apply_meta(entries[i:i + EXEC_BATCH])

    async def _apply_meta(self, batch: Sequence[Action]) -> None:
        if len(batch) <= SHELL_META_MAX:
            failed = await self._run_script(batch, self._meta_lines(batch))
        else:
            failed = await self._apply_meta_many(batch)
        for i, reason in failed.items():
            self._fail(batch[i], f"cannot apply permissions/mtime: {reason}")

    async def _apply_meta_many(self, batch: Sequence[Action]) -> dict[int, str]:
        if self.has_python is None:
            self.has_python = USE_PYTHON_META and await self._probe_python()
        if self.has_python:
            return await self._run_python_meta(batch)
        return await self._run_script(batch, self._meta_lines(batch))

    @staticmethod
    def _link_lines(batch: Sequence[Action]) -> list[str]:
        lines = []
        for a in batch:
            assert a.link_target is not None
            parent = posixpath.dirname(a.rel)
            mk = f"mkdir -p -- {_shell_path(parent)} && " if parent else ""
            lines.append(f"{mk}ln -sfn -- {shlex.quote(a.link_target)} {_shell_path(a.rel)}")
        return lines

    @staticmethod
    def _meta_lines(batch: Sequence[Action]) -> list[str]:
        lines = []
        for a in batch:
            secs, ns = divmod(a.mtime_ns, 1_000_000_000)
            p = _shell_path(a.rel)
            lines.append(f"chmod {a.mode:o} -- {p} && touch -c -m -d @{secs}.{ns:09d} -- {p}")
        return lines

    async def _run_script(self, batch: Sequence[Action], lines: Sequence[str]) -> dict[int, str]:
        """Run one shell script doing one line per entry; returns {index: error} for failures."""
        script = "\n".join(
            f"out=$( {{ {line} ; }} 2>&1 ) || "
            f"printf 'F %d %s\\n' {i} \"$(printf %s \"$out\" | tr '\\n' ' ')\""
            for i, line in enumerate(lines)
        )
        return await self._exec_batch(script, len(batch))

    async def _exec_batch(self, script: str, n: int, stdin: bytes = b"",
                          command: str | None = None) -> dict[int, str]:
        try:
            res = await self.client.exec(command or script, work_dir=self.dest,
                                         timeout_seconds=EXEC_TIMEOUT, stdin=stdin)
        except FATAL_ERRORS:
            raise
        except (MemohError, OSError) as exc:
            return dict.fromkeys(range(n), _plain(exc))
        failed: dict[int, str] = {}
        for line in res.stdout.decode("utf-8", "replace").splitlines():
            parts = line.split(" ", 2)
            if len(parts) >= 2 and parts[0] == "F" and parts[1].isdigit():
                failed[int(parts[1])] = (parts[2] if len(parts) > 2 else "").strip() or "failed"
        if res.exit_code != 0 and not failed:
            why = res.stderr.decode("utf-8", "replace").strip() or f"exit code {res.exit_code}"
            return dict.fromkeys(range(n), f"the container's shell failed: {why}")
        return failed

    async def _probe_python(self) -> bool:
        try:
            res = await self.client.exec("command -v python3 >/dev/null 2>&1", work_dir=self.dest,
                                         timeout_seconds=30)
        except FATAL_ERRORS:
            raise
        except (MemohError, OSError):
            return False
        return res.exit_code == 0

    async def _run_python_meta(self, batch: Sequence[Action]) -> dict[int, str]:
        """One python3 process applies a whole batch (far cheaper than a touch per file)."""
        records = b"".join(
            b"%o %d %s\0" % (a.mode, a.mtime_ns, os.fsencode("./" + a.rel)) for a in batch
        )
        return await self._exec_batch("", len(batch), stdin=records, command=_PY_META)


class _BatchFailed(Exception):
    """A whole tar batch failed in the container (its files are failed with this message)."""


def _read_members(batch: Sequence[Action],
                  ) -> tuple[list[tuple[Action, bytes, str | None]], list[Action]]:
    """Worker thread: read each file of a batch whole, with its SHA-256.

    Returns ``(members, changed)``: ``(action, data, sha256)`` for files read exactly as the walk
    saw them, and the actions of files that changed (or vanished) in between.
    """
    members: list[tuple[Action, bytes, str | None]] = []
    changed: list[Action] = []
    for action in batch:
        try:
            with open(action.host_path, "rb") as f:
                data = f.read(action.size + 1)
        except OSError:
            changed.append(action)  # the per-file path reports the error in its words
            continue
        if len(data) != action.size or _source_unchanged(action) is not None:
            changed.append(action)
            continue
        members.append((action, data, hashlib.sha256(data).hexdigest()))
    return members, changed


#: Applies "MODE MTIME_NS PATH\0" records from stdin; prints "F index reason" per failure.
#: ``-S``: no ``site`` import, which halves the interpreter's start-up (measured 160 -> 80 ms
#: under a pyenv shim, 18 ms for /usr/bin/python3 -S); the script needs only os and sys.
_PY_META = "python3 -S -c " + shlex.quote(
    "import os,sys\n"
    "data=sys.stdin.buffer.read().split(b'\\0')\n"
    "for i,r in enumerate(data[:-1]):\n"
    "    m,t,p=r.split(b' ',2)\n"
    "    try:\n"
    "        os.chmod(p,int(m,8),follow_symlinks=False) if not os.path.islink(p) else None\n"
    "        t=int(t); os.utime(p,ns=(t,t),follow_symlinks=False)\n"
    "    except OSError as e:\n"
    "        print('F',i,e.strerror,flush=True)\n"
)


# --------------------------------------------------------------------------- public API


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
) -> MigrationReport:
    """Copy the tree under ``src`` into the container and, on full success, rename ``src``.

    Args:
        src: the source directory on this host.
        client: a connected :class:`memoh_trio.Client`.
        dest: destination directory under the server root ("" = the root, as the seed does).
        concurrency: file streams at once.
        chunk_size: WriteRaw chunk size (``None``: the client's default).
        verify: ``"size"`` (bytes read == written == size at open) or ``"sha256"`` (also the
            container's hash of the uploaded file, before it is moved into place).
        preserve: apply permission bits and mtimes in the container (batched Exec).
        rename: rename ``src`` to ``src + ".migrated"`` when everything made it.
        dry_run: walk and classify only; copy and rename nothing.
        resume: skip files already at the destination with the same size and mtime.
        progress: updated as the copy goes (see :class:`memoh_trio.Progress`).
        stall_timeout: fail a file whose stream makes no progress for this many seconds
            (default 60 s; ``None`` waits forever).
        lock_wait: seconds to wait for another migration of ``src`` (0: fail at once).
        tar_batches: send runs of small files as tar streams through Exec (see
            :mod:`memoh_trio._tarbatch`) when the container has ``tar``; off: one WriteRaw +
            Rename per file.

    Returns:
        The report; ``report.ok`` is false when some entries failed (the source is then kept).

    Raises:
        ConfigError: bad options. SourceError: bad source. MigrationBusy: another run holds the
        lock. Unavailable / Unauthenticated: the connection was lost or refused (fatal; the copy
        was stopped and nothing renamed).
    """
    _check_options(concurrency, chunk_size, verify, stall_timeout)
    path = check_source(src)
    progress = progress if progress is not None else Progress()
    async with single_flight(path, wait=lock_wait):
        if _already_migrated(path):  # the run we waited for renamed it
            progress.finish()
            return MigrationReport(source=path, dest=_norm_dest(dest), status="already-migrated")
        check_source(path)
        run = _Run(path, client, dest=_norm_dest(dest), concurrency=concurrency,
                   chunk_size=chunk_size, verify=verify, preserve=preserve, rename=rename,
                   dry_run=dry_run, resume=resume, progress=progress,
                   stall_timeout=stall_timeout, tar_batches=tar_batches)
        return await run.run()


def _already_migrated(src: str) -> bool:
    return not os.path.lexists(src) and os.path.isdir(src + MIGRATED_SUFFIX)


def _bot_state(src: str) -> Literal["already-migrated", "nothing-to-do", "migrate"]:
    """The seed's checks, in its order: migrated already? any data?"""
    if os.path.isdir(src + MIGRATED_SUFFIX):
        return "already-migrated"
    try:
        st = os.stat(src)
        if not stat.S_ISDIR(st.st_mode):
            return "nothing-to-do"
        with os.scandir(src) as it:
            empty = next(it, None) is None
    except FileNotFoundError:
        return "nothing-to-do"
    except OSError as exc:
        raise SourceError(f"cannot read source {src}: {describe_os_error(exc)}") from None
    return "nothing-to-do" if empty else "migrate"


def _bot_source(data_root: str | os.PathLike[str], bot_id: str) -> str:
    return os.path.join(os.path.abspath(os.fspath(data_root)), "bots", bot_id)


def _check_bot_id(bot_id: str) -> None:
    if not bot_id or bot_id in (".", "..") or "/" in bot_id or "\0" in bot_id:
        raise ConfigError(f"not a valid bot id: {bot_id!r}")


async def migrate_bot(
    bot_id: str,
    data_root: str | os.PathLike[str],
    client_or_pool: Client | ClientSource,
    **opts: object,
) -> MigrationReport:
    """Migrate ``DATA_ROOT/bots/<bot_id>`` with the seed's semantics.

    Already migrated (``<bot_id>.migrated`` exists) → ``status="already-migrated"``; no source
    directory, or an empty one → ``status="nothing-to-do"``; otherwise :func:`migrate` with
    ``opts``. ``client_or_pool`` is a client, or a pool whose ``get(bot_id)`` gives one.

    Raises:
        as :func:`migrate`; SourceError if the bot directory cannot be read.
    """
    _check_bot_id(bot_id)
    src = _bot_source(data_root, bot_id)
    state = _bot_state(src)
    if state != "migrate":
        progress = opts.get("progress")
        if isinstance(progress, Progress):
            progress.finish()
        return MigrationReport(source=src, status=state)
    get = getattr(client_or_pool, "get", None)
    client: Client = await get(bot_id) if get is not None else client_or_pool  # type: ignore[assignment]
    return await migrate(src, client, **opts)  # type: ignore[arg-type]


def list_bots(data_root: str | os.PathLike[str]) -> list[str]:
    """Bot ids under ``DATA_ROOT/bots/``: directories, ``.migrated`` and hidden ones excluded."""
    bots_dir = os.path.join(os.fspath(data_root), "bots")
    try:
        with os.scandir(bots_dir) as it:
            names = [e.name for e in it if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SourceError(f"cannot read {bots_dir}: {describe_os_error(exc)}") from None
    return sorted(n for n in names if not n.startswith(".") and not n.endswith(MIGRATED_SUFFIX))


async def migrate_all(
    data_root: str | os.PathLike[str],
    targets: ClientSource | Mapping[str, str] | Callable[[str], str],
    *,
    bot_concurrency: int = DEFAULT_BOT_CONCURRENCY,
    file_concurrency: int = DEFAULT_CONCURRENCY,
    **opts: object,
) -> list[MigrationReport]:
    """Migrate every bot under ``DATA_ROOT/bots/``, one report per bot, in bot-id order.

    ``targets`` is a pool (``get(bot_id)``), or an address map / function from which a
    :class:`memoh_trio.Pool` is built. At most ``bot_concurrency`` bots and, within each,
    ``file_concurrency`` file streams run at once. One bot's failure (including a lost connection
    to its container) never stops the others: it becomes that bot's incomplete report.
    """
    if isinstance(bot_concurrency, bool) or not isinstance(bot_concurrency, int) \
            or bot_concurrency < 1:
        raise ConfigError(f"bot concurrency must be at least 1, got {bot_concurrency!r}")
    _check_options(file_concurrency, None, str(opts.get("verify", "size")), None)
    opts.pop("progress", None)
    bots = list_bots(data_root)
    if hasattr(targets, "get") and not isinstance(targets, Mapping):
        return await _migrate_bots(bots, data_root, targets, bot_concurrency, file_concurrency,
                                   opts)
    from ._pool import Pool

    async with Pool(targets) as pool:
        return await _migrate_bots(bots, data_root, pool, bot_concurrency, file_concurrency, opts)


async def _migrate_bots(bots: Iterable[str], data_root: str | os.PathLike[str],
                        pool: ClientSource, bot_concurrency: int, file_concurrency: int,
                        opts: dict[str, object]) -> list[MigrationReport]:
    reports: dict[str, MigrationReport] = {}
    limiter = trio.CapacityLimiter(bot_concurrency)

    async def one(bot_id: str) -> None:
        async with limiter:
            start = time.monotonic()
            try:
                reports[bot_id] = await migrate_bot(bot_id, data_root, pool,
                                                     concurrency=file_concurrency, **opts)
            except MemohError as exc:
                reports[bot_id] = MigrationReport(
                    source=_bot_source(data_root, bot_id), status="incomplete",
                    error=str(exc), seconds=time.monotonic() - start)

    bots = list(bots)
    async with trio.open_nursery() as nursery:
        for bot_id in bots:
            nursery.start_soon(one, bot_id)
    return [reports[b] for b in bots]
