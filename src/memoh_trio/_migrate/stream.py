"""One file through ``WriteRaw``: temporary sibling → verify → ``Rename`` onto its final name.

The file is streamed to ``.memoh-part-<random>`` next to its final path (size pinned to the size
seen by the walk; SHA-256 computed while reading with ``verify="sha256"``), verified (bytes read
== bytes written == size; the source unchanged since; with sha256 the container's hash of the
temporary file) and only then renamed into place. On any failure or cancellation the temporary
file is deleted (shielded, bounded in time), so no final path ever holds a partial file, even on
a server that writes in place.
"""

from __future__ import annotations

import hashlib
import posixpath
import secrets

from .. import _scripts
from .._errors import InvalidArgument, Unimplemented
from .._plan import Action, Kind
from .context import EXEC_TIMEOUT, PART_PREFIX, Context, source_unchanged


def part_name(final: str) -> str:
    """The temporary sibling of a final path (short, so 255-byte names still fit)."""
    parent = posixpath.dirname(final)
    name = PART_PREFIX + secrets.token_hex(8)
    return f"{parent}/{name}" if parent else name


async def copy_file(ctx: Context, action: Action) -> str | None:
    """Copy one regular file; ``None`` when it is in place and verified, else why not.

    Raises:
        MemohError / OSError: the call failed (the caller records it, or stops on a fatal one).
    """
    final = ctx.path(action.rel)
    if action.kind is Kind.CREATE:
        # Nothing can be partial in an empty file: write it in place.
        result = await ctx.client.write_raw(final, b"", expected_size=0)
        why = source_unchanged(action)
        if why is None and result.bytes_written != 0:
            why = f"the server wrote {result.bytes_written} bytes for an empty file"
        return why

    part = part_name(final)
    sent = 0

    def on_progress(nbytes: int) -> None:
        nonlocal sent
        sent += nbytes
        ctx.progress.sent(nbytes)

    placed = False
    try:
        result = await ctx.client.write_raw(
            part, action.host_path, chunk_size=ctx.opts.chunk_size, expected_size=action.size,
            hash_sha256=ctx.opts.verify == "sha256", on_progress=on_progress,
            stall_timeout=ctx.opts.stall_timeout,
        )
        why = source_unchanged(action)
        if why is None and not (result.bytes_read == result.bytes_written == action.size):
            why = (f"size mismatch: {action.size} bytes at open, {result.bytes_read} read, "
                   f"{result.bytes_written} written by the server")
        if why is None and ctx.opts.verify == "sha256":
            why = await verify_sha256(ctx, part, result.sha256)
        if why is not None:
            return why
        await ctx.client.rename(part, final)
        placed = True
        return None
    finally:
        if not placed:
            ctx.progress.unsent(sent)
            await ctx.discard(part)


async def verify_sha256(ctx: Context, path: str, local: str | None) -> str | None:
    """``None`` if the container's file hashes to ``local``, else why not."""
    if local is None:
        return "no SHA-256 was computed while reading the source"
    remote: str | None = None
    try:
        res = await ctx.client.exec(_scripts.sha256_command(path), timeout_seconds=EXEC_TIMEOUT)
        if res.exit_code == 0:
            remote = _scripts.parse_sha256(res.stdout)
    except (Unimplemented, InvalidArgument):
        remote = None
    if remote is None:  # no Exec or no sha256sum in the container: read it back
        h = hashlib.sha256()
        async with ctx.client.read_raw(path) as chunks:
            async for chunk in chunks:
                h.update(chunk)
        remote = h.hexdigest()
    if remote != local.lower():
        return f"SHA-256 mismatch: source {local}, container {remote}"
    return None
