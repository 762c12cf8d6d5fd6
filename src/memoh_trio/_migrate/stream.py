"""One file through ``WriteRaw``: temporary sibling → verify → ``Rename`` onto its final name.

The source is opened safely (:mod:`memoh_trio._source`: no symlink followed, no FIFO waited
for, the same inode, size and mtime as the walk saw) before a byte is sent. The file is streamed
to ``.memoh-part-<random>`` next to its final path (size pinned to the size seen by the walk;
SHA-256 computed while reading with ``verify="sha256"``), verified (bytes read == bytes written
== size == the temporary file's size in the container's own ``Stat``; the open file and the path
still that same file; with sha256 the container's hash of the temporary file) and only then
renamed into place. On any failure or cancellation the temporary
file is deleted (shielded, bounded in time), so no final path ever holds a partial file, even on
a server that writes in place.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import threading
from collections.abc import Callable
from typing import BinaryIO

import trio

from .. import _scripts, _source
from .._errors import (
    DeadlineExceeded,
    InvalidArgument,
    MemohError,
    NotFound,
    Stalled,
    Unavailable,
    Unimplemented,
)
from .._plan import Action
from .._results import FileEntry
from . import lifecycle
from .context import EXEC_TIMEOUT, PART_PREFIX, Context, temp_token
from .lifecycle import Event, Step


def part_name(final: str) -> str:
    """The temporary sibling of a final path (short, so 255-byte names still fit)."""
    parent = posixpath.dirname(final)
    name = PART_PREFIX + temp_token()
    return f"{parent}/{name}" if parent else name


async def open_source(action: Action) -> int:
    """:func:`memoh_trio._source.open_source` in a worker thread that a cancellation abandons
    (a descriptor opened after that is closed by the thread itself).

    Raises:
        SourceChanged: not the file the walk saw (the message says why).
    """
    lock = threading.Lock()
    abandoned = False

    def work() -> int:
        fd = _source.open_source(action)
        with lock:
            if abandoned:
                os.close(fd)
        return fd

    try:
        return await trio.to_thread.run_sync(work, abandon_on_cancel=True)
    except trio.Cancelled:
        with lock:
            abandoned = True
        raise


async def copy_file(ctx: Context, action: Action, *,
                    park: Callable[[Action, str, str | None], bool] | None = None,
                    at_top: bool = False) -> str | None:
    """Copy one regular file; ``None`` when it is in place and verified, else why not.

    ``park``: a file sent whole and checked on this side is offered to it with its
    temporary path (relative to the destination) and its SHA-256 (``verify="sha256"``);
    taken (``True``), it is not checked in the container nor renamed here: the caller places
    it (:mod:`.place`), and ``None`` is returned. ``at_top``: the temporary file goes in the
    destination's top directory (the agent moves it into its own through descriptors: no
    directory a process could swap is on the way of the bytes ``WriteRaw`` writes by path).

    Raises:
        MemohError / OSError: the call failed (the caller records it, or stops on a fatal one).
    """
    # An empty file takes the same way as any other (temporary name, checks, Rename): written
    # in place, a symlink, FIFO or device node standing at its final name in the container
    # would be opened through (Memoh's server ``os.Create``s the path: a symlink's target
    # outside the tree was emptied), and a FIFO or device would stay where the file goes.
    # ``Rename`` replaces whatever stands there with the regular file.
    final = ctx.path(action.rel)
    try:
        fd = await open_source(action)
    except _source.SourceChanged as exc:
        return str(exc)
    try:
        return await _copy_open(ctx, action, fd, final, park, at_top)
    finally:
        os.close(fd)


async def _copy_open(ctx: Context, action: Action, fd: int, final: str,
                     park: Callable[[Action, str, str | None], bool] | None,
                     at_top: bool) -> str | None:
    part_rel = part_name("" if at_top else action.rel)
    part = ctx.path(part_rel)
    sent = 0

    def on_progress(nbytes: int) -> None:
        nonlocal sent
        sent += nbytes
        ctx.ledger.sending(action.rel, nbytes)

    # The reader gets the checked inode, never the source path (see _source.reader_path).
    via = _source.reader_path(fd)
    source: str | BinaryIO = (via if via is not None
                              else os.fdopen(os.dup(fd), "rb", buffering=0))
    placed = False
    unanswered = True  # the WriteRaw is on its way: the server may yet create ``part``
    lifecycle.note(action.rel, Step.STREAM)
    try:
        try:
            result = await ctx.client.write_raw(
                part, source, chunk_size=ctx.opts.chunk_size, expected_size=action.size,
                hash_sha256=ctx.opts.verify == "sha256", on_progress=on_progress,
                stall_timeout=ctx.opts.stall_timeout,
            )
        except MemohError as exc:
            # A status is the server's answer (its handler is over); a lost or stalled link
            # is not, nor a cancellation.
            unanswered = isinstance(exc, Unavailable | DeadlineExceeded | Stalled)
            raise
        finally:
            if not isinstance(source, str):
                source.close()
        unanswered = False
        why = _source.check_after(fd, action)
        if why is None and not (result.bytes_read == result.bytes_written == action.size):
            why = (f"size mismatch: {action.size} bytes at open, {result.bytes_read} read, "
                   f"{result.bytes_written} written by the server")
        if why is None and park is not None and park(action, part_rel, result.sha256):
            placed = True  # or failed, by whoever places it: the temporary file is theirs
            return None
        if why is None:
            if ctx.opts.verify == "size":
                lifecycle.note(action.rel, Step.STAT_RENAME)
            why = await verify_size(ctx, part, result.bytes_read, result.bytes_written)
        if why is None and ctx.opts.verify == "sha256":
            why = await verify_sha256(ctx, part, result.sha256, action.rel)
        if why is not None:
            return why
        await ctx.client.rename(part, final)
        placed = True
        return None
    finally:
        if not placed:  # its failure gives its bytes back (the ledger)
            await ctx.discard(part, settle=unanswered)


def check_event(why: str) -> Event:
    """The lifecycle event of a failed container check (:func:`verify_size`,
    :func:`verify_sha256`): its temporary file gone, its bytes not those sent, or refused."""
    if why.startswith("the temporary file is missing"):
        return Event.GONE
    if why.startswith(("the container holds", "SHA-256 mismatch")):
        return Event.BAD
    return Event.REFUSED


class TemporaryGone(Exception):
    """A held file's temporary file is not in the container (a placement that did not vouch
    for it may have moved it): it is sent again (RECHECK -> RESEND)."""


async def finish_parked(ctx: Context, action: Action, part_rel: str,
                        sha256: str | None = None) -> str | None:
    """Check and move one parked file the per-file way (no record vouched for it, or its batch
    goes the per-file way): the container's ``Stat`` (and with ``verify="sha256"`` its hash
    against ``sha256``), then ``Rename``; ``None`` when it is in place, else why not (its
    temporary file is then deleted).

    Raises:
        TemporaryGone: its temporary file is not there (nothing to delete).
    """
    part = ctx.path(part_rel)
    placed = False
    lifecycle.note(action.rel, Step.STAT_RENAME)
    try:
        try:
            entry = await ctx.client.stat(part)
        except NotFound:
            placed = True  # nothing to delete
            raise TemporaryGone(part) from None
        why = size_mismatch(entry, action.size, action.size)
        if why is None and ctx.opts.verify == "sha256":
            why = await verify_sha256(ctx, part, sha256, action.rel)
        if why is None:
            await ctx.client.rename(part, ctx.path(action.rel))
            placed = True
        return why
    finally:
        if not placed:
            await ctx.discard(part)


async def verify_size(ctx: Context, part: str, nread: int, written: int) -> str | None:
    """``None`` if the container's temporary file has the ``nread`` bytes read (its ``Stat``:
    the server's ``bytes_written`` count alone is not trusted), else why not."""
    try:
        entry = await ctx.client.stat(part)
    except NotFound:
        return ("the temporary file is missing in the container after the upload "
                f"(the server reported {written} bytes written)")
    return size_mismatch(entry, nread, written)


def size_mismatch(entry: FileEntry, nread: int, written: int) -> str | None:
    """Why the container's ``Stat`` of a temporary file does not show the bytes sent."""
    if entry.is_dir or entry.size != nread:
        return (f"the container holds {entry.size} bytes of the {nread} sent (the server "
                f"reported {written} written): not moved into place")
    return None


async def verify_sha256(ctx: Context, path: str, local: str | None,
                        rel: str = "") -> str | None:
    """``None`` if the container's file hashes to ``local``, else why not (``rel``: the
    file's path, for the trace)."""
    if local is None:
        return "no SHA-256 was computed while reading the source"
    remote: str | None = None
    try:
        res = await ctx.client.exec(_scripts.sha256_command(path), timeout_seconds=EXEC_TIMEOUT)
        if res.exit_code == 0:
            remote = _scripts.parse_sha256(res.stdout)
    except (Unimplemented, InvalidArgument):
        remote = None
    lifecycle.note(rel, Step.SHA256SUM if remote is not None else Step.READ_BACK)
    if remote is None:  # no Exec or no sha256sum in the container: read it back
        h = hashlib.sha256()
        async with ctx.client.read_raw(path) as chunks:
            async for chunk in chunks:
                h.update(chunk)
        remote = h.hexdigest()
    if remote != local.lower():
        return f"SHA-256 mismatch: source {local}, container {remote}"
    return None
