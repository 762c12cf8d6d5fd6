"""What the parts of one migration share: frozen options, the client with deadlines, constants.

The transfer methods (:mod:`.stream`, :mod:`.tar`, :mod:`.meta`) get a :class:`Context`: the
options (frozen), the client, the limiter, the progress observer and the run's
:class:`~.ledger.Ledger`. They return what happened (copied, failed with a reason, changed) and
the run records it in the ledger; the one thing a part may do to the run is
:meth:`~.ledger.Ledger.lose`: a fatal error (lost connection, refused credentials) that cancels
the remaining work.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import posixpath
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import trio

from .. import _scripts, _source
from .._defaults import DEFAULT_BOT_CONCURRENCY as DEFAULT_BOT_CONCURRENCY
from .._defaults import DEFAULT_CONCURRENCY as DEFAULT_CONCURRENCY
from .._defaults import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from .._errors import (
    ConfigError,
    MemohError,
    NotFound,
    RPCError,
    Unauthenticated,
    Unavailable,
)
from .._paths import PART_PREFIX as PART_PREFIX
from .._paths import SERVER_TEMP_PREFIX as SERVER_TEMP_PREFIX
from .._plan import Action
from .._progress import Progress
from .outcomes import plain as plain

if TYPE_CHECKING:
    from .._client import Client, ExecResult
    from .ledger import Ledger


class _Names:
    """16 hex digits for a temporary's name, unique to this process: 8 random, drawn once per
    process (again after a fork), then a counter; one ``urandom`` per process, not per file."""

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._count = 0

    def __call__(self) -> str:
        if self._pid != os.getpid():
            self._pid, self._prefix, self._count = os.getpid(), secrets.token_hex(4), 0
        self._count = (self._count + 1) & 0xFFFFFFFF
        return f"{self._prefix}{self._count:08x}"


#: A fresh 16-hex-digit token for a temporary name (:class:`_Names`).
temp_token = _Names()

#: Suffix of a migrated source (the seed's ``migratedSuffix``).
MIGRATED_SUFFIX = ".migrated"
#: A stream with no progress for this long fails (the migration never hangs by default).
DEFAULT_STALL_TIMEOUT = 60.0
#: Timeout given to the server for each batched Exec, in seconds.
EXEC_TIMEOUT = 300
#: Seconds allowed to delete a temporary file after a failure (shielded from cancellation).
CLEANUP_TIMEOUT = 5.0
#: Pause between attempts to delete a staging directory a cancelled Exec may still write into.
CLEANUP_RETRY = 0.05
#: Seconds a staging dir of an Exec that never answered must stay gone before its cleanup ends
#: (:meth:`Context.discard`): the server may start the cancelled script after a first deletion.
STAGING_SETTLE = 0.25
#: Errors that doom every remaining file: cancel the run and raise them.
FATAL_ERRORS: tuple[type[RPCError], ...] = (Unavailable, Unauthenticated)

Verify = Literal["size", "sha256"]


def control_timeout(stall_timeout: float) -> float:
    """Deadline of one control call: ten stall timeouts, at least 10 s (pure)."""
    return max(10.0 * stall_timeout, 10.0)


@dataclass(frozen=True)
class Options:
    """The options of one :func:`memoh_trio.migrate` call (see its docstring)."""

    dest: str = ""
    concurrency: int = DEFAULT_CONCURRENCY
    chunk_size: int | None = None
    verify: Verify = "size"
    preserve: bool = True
    rename: bool = True
    dry_run: bool = False
    resume: bool = True
    stall_timeout: float | None = DEFAULT_STALL_TIMEOUT
    tar_batches: bool = True
    rename_without_flush: bool = False
    agent: bool = True


def check_options(opts: Options) -> None:
    """Raise :class:`ConfigError` for options no run could use."""
    c = opts.concurrency
    if isinstance(c, bool) or not isinstance(c, int) or c < 1:
        raise ConfigError(f"concurrency must be a whole number of at least 1, got {c!r}")
    size = opts.chunk_size
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)
                             or not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE):
        raise ConfigError(f"chunk size must be {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes "
                          f"(16 KiB to 4 MiB - 1 KiB), got {size!r}; hint: 1MiB is the default")
    if opts.verify not in ("size", "sha256"):
        raise ConfigError(f"verify must be 'size' or 'sha256', got {opts.verify!r}")
    if opts.stall_timeout is not None and not opts.stall_timeout > 0:
        raise ConfigError(f"stall timeout must be positive, got {opts.stall_timeout!r}")


class Deadlined:
    """A client whose calls, except ``write_raw``, fail as Unavailable past a deadline.

    A connection that stalls (a dead peer behind a live TCP path) would otherwise hang a control
    call forever; Unavailable is fatal to the run, which then stops promptly with one error.
    """

    def __init__(self, client: Client, seconds: float) -> None:
        self._client = client
        self._seconds = seconds

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name == "read_raw":
            return self._read_raw
        if name == "write_raw" or not inspect.iscoroutinefunction(attr):
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

    @contextlib.asynccontextmanager
    async def _read_raw(self, path: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """``Client.read_raw`` (a plain function returning an async context manager, not a
        coroutine function): the whole read, open to last chunk, within the deadline."""
        try:
            with trio.fail_after(self._seconds):
                async with self._client.read_raw(path) as chunks:
                    yield chunks
        except trio.TooSlowError:
            raise Unavailable(f"no answer from the container within {self._seconds:g} s",
                              method="read_raw") from None


@dataclass
class Context:
    """What a transfer method needs of its run."""

    client: Client
    opts: Options
    ledger: Ledger
    limiter: trio.CapacityLimiter

    @property
    def progress(self) -> Progress:
        return self.ledger.progress

    def path(self, rel: str) -> str:
        """The container path of a source-relative path."""
        return join(self.opts.dest, rel)

    async def exec(self, command: str, *, stdin: bytes = b"",
                   timeout_seconds: int = EXEC_TIMEOUT) -> ExecResult:
        """Run ``command`` in the destination directory (see :func:`memoh_trio._scripts.in_dir`:
        never through a relative ``work_dir``, which Memoh's server resolves elsewhere)."""
        return await self.client.exec(_scripts.in_dir(self.opts.dest, command), stdin=stdin,
                                      timeout_seconds=timeout_seconds)

    async def discard(self, path: str, *, recursive: bool = False,
                      settle: bool = False) -> None:
        """Delete a temporary file or staging dir (a container path), best effort, shielded.

        A cleanup with no answer within :data:`CLEANUP_TIMEOUT` means the link is as good as
        gone (a stalled stream is a per-file failure, but on a dead link every next file would
        stall in turn, each with its own cleanup: the soak saw a run go past 60 s that way), so
        it is fatal to the run.

        ``settle`` (a staging dir whose Exec, or a temporary file whose WriteRaw, was sent and
        never answered): it must stay gone for :data:`STAGING_SETTLE`, not just be gone once
        (see below).
        """
        timeout = 1.0 if self.ledger.fatal is not None else CLEANUP_TIMEOUT
        gone_since: float | None = None
        with trio.CancelScope(shield=True), trio.move_on_after(timeout) as limit:
            while True:
                with contextlib.suppress(MemohError, OSError):
                    await self.client.delete_file(path, recursive=recursive)
                if not recursive and not settle:
                    return
                # A staging directory: the Exec cancelled just before may still be running its
                # script in it for a moment (the server kills the script once it sees the
                # cancellation) and write into it after it was deleted (seen: 1 run in 20 of
                # test_cancel_never_renames_and_cleans_up). Delete until it is gone. A
                # cancelled Exec may even start its script after the first deletion found
                # nothing (seen in test_guarantee: a run cancelled at 29 ms under load left a
                # staging dir made after its cleanup), hence ``settle``; so may a cancelled
                # WriteRaw create its file after the deletion (a server's other thread).
                try:
                    await self.client.stat(path)
                except NotFound:
                    now = trio.current_time()
                    if gone_since is None:
                        gone_since = now
                    if not settle or now - gone_since >= STAGING_SETTLE:
                        return
                except (MemohError, OSError):
                    return  # cannot tell: the next run removes stale staging dirs
                else:
                    gone_since = None  # there (again): deleted on the next turn
                await trio.sleep(CLEANUP_RETRY)
        if limit.cancelled_caught and self.ledger.fatal is None and self.ledger.copy_running:
            self.ledger.lose(Unavailable(f"no answer from the container within {timeout:g} s "
                                         f"(deleting {path})", method="DeleteFile"))


def norm_dest(dest: str) -> str:
    """A destination directory as a clean relative path ("" = the server's root), pure.

    Only spellings of the same directory are tidied (``a//b/./c/`` is ``a/b/c``); a path that
    would mean something else on some server is refused, never rewritten.

    Raises:
        ConfigError: ``dest`` is absolute (Memoh's server takes an absolute path as the
            container's own path, not under its root: ``/data/sub`` would not be ``data/sub``),
            or has a ``..`` component (it would leave the server's root, or be cut off there).
    """
    typed = dest
    dest = dest.replace(os.sep, "/")
    if dest.startswith("/"):
        raise ConfigError(
            f"destination (--dest) {typed!r} is an absolute path; hint: give it relative to "
            "the server's root (the work directory /data in Memoh's containers: for /data/sub "
            "give 'sub')")
    if ".." in dest.split("/"):
        raise ConfigError(f"destination (--dest) {typed!r} has a '..' component; hint: give "
                          "a directory under the server's root, without '..'")
    d = posixpath.normpath("/" + dest).lstrip("/")
    return "" if d in (".", "") else d


def join(dest: str, rel: str) -> str:
    return f"{dest}/{rel}" if dest else rel


def source_unchanged(action: Action) -> str | None:
    """``None`` if the path still names the file the walk saw (same inode, size and mtime; not
    followed), else why not. See :mod:`memoh_trio._source` for opening it safely."""
    return _source.check_path(action, when="while it was copied")
