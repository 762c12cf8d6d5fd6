"""Batched container-side work: symlinks, permission bits and mtimes, and the final ``sync``.

Each batch is one ``Exec`` running a script from :mod:`memoh_trio._scripts` (never one RPC per
entry); each function returns ``{index in batch: reason}`` for the entries that failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .. import _scripts
from .._errors import MemohError, Unimplemented
from .._plan import Action
from .context import EXEC_TIMEOUT, FATAL_ERRORS, Context, plain

#: Entries per batched Exec (symlinks, permissions and mtimes): keeps each script well below
#: the message size limit (a 4 KiB path quoted twice per entry, 1000 entries ~ 8 MiB worst case).
EXEC_BATCH = 1000
#: Apply modes/mtimes with one python3 process per batch when the container has python3 (else
#: one shell ``chmod`` + ``touch`` per entry). A switch so tests can exercise both paths.
USE_PYTHON_META = True
#: Batches of at most this many entries use the shell (a chmod and a touch per entry, ~1-2 ms
#: each) even where python3 exists: its start-up (20 ms for a plain /usr/bin/python3, 80+ ms
#: behind a pyenv shim) costs more than a few processes.
SHELL_META_MAX = 8
#: Early writeback: while files are being sent, the container is asked to ``sync`` each time
#: this many more bytes went out, so the ``sync`` that must precede the rename only has the tail
#: left to flush (it took a third of a 2 x 128 MiB migration when it flushed everything at the
#: end). Best effort: a failed early ``sync`` is ignored; the final one decides.
WRITEBACK_BYTES = 32 * 1024 * 1024


@dataclass
class Capabilities:
    """What the container was found to have (probed at most once per run)."""

    python: bool | None = None


async def recreate_links(ctx: Context, batch: Sequence[Action]) -> dict[int, str]:
    """Recreate the symlinks of ``batch`` (never following anything)."""
    return await _run_lines(ctx, len(batch), _scripts.link_lines(batch))


async def apply_meta(ctx: Context, caps: Capabilities,
                     batch: Sequence[Action]) -> dict[int, str]:
    """Apply permission bits and mtimes to ``batch``."""
    if len(batch) <= SHELL_META_MAX:
        return await _run_lines(ctx, len(batch), _scripts.meta_lines(batch))
    if caps.python is None:
        caps.python = USE_PYTHON_META and await _probe_python(ctx)
    if caps.python:
        return await _exec_batch(ctx, len(batch), _scripts.PY_META,
                                 _scripts.py_meta_records(batch))
    return await _run_lines(ctx, len(batch), _scripts.meta_lines(batch))


async def flush(ctx: Context) -> str | None:
    """One ``sync`` in the container before the source may be renamed; ``None`` or why not.

    What the rename vouches for must be on the container's disk, not only in its page cache:
    one Exec for the whole tree, instead of an fsync per file on the server's hot path. A
    server without Exec (UNIMPLEMENTED) cannot be asked; its own durability applies.
    """
    try:
        res = await ctx.client.exec("sync", work_dir=ctx.opts.dest,
                                    timeout_seconds=EXEC_TIMEOUT)
    except FATAL_ERRORS:
        raise
    except Unimplemented:
        return None
    except (MemohError, OSError) as exc:
        return f"cannot flush the container's disk: {plain(exc)}"
    if res.exit_code != 0:
        why = res.stderr.decode("utf-8", "replace").strip() or f"exit code {res.exit_code}"
        return f"cannot flush the container's disk: {why}"
    return None


async def writeback(ctx: Context) -> None:
    """Early ``sync`` every :data:`WRITEBACK_BYTES` sent (runs beside the copy)."""
    mark = WRITEBACK_BYTES
    while True:
        await ctx.progress.value.wait_value(lambda s, m=mark: s.bytes_done >= m)
        try:
            await ctx.client.exec("sync", work_dir=ctx.opts.dest, timeout_seconds=EXEC_TIMEOUT)
        except (MemohError, OSError):
            return  # no Exec, or it failed: the final sync reports what matters
        mark = ctx.progress.state.bytes_done + WRITEBACK_BYTES


async def _run_lines(ctx: Context, n: int, lines: Sequence[str]) -> dict[int, str]:
    return await _exec_batch(ctx, n, _scripts.per_entry_script(lines))


async def _exec_batch(ctx: Context, n: int, command: str, stdin: bytes = b"") -> dict[int, str]:
    try:
        res = await ctx.client.exec(command, work_dir=ctx.opts.dest,
                                    timeout_seconds=EXEC_TIMEOUT, stdin=stdin)
    except FATAL_ERRORS:
        raise
    except (MemohError, OSError) as exc:
        return dict.fromkeys(range(n), plain(exc))
    failed = _scripts.parse_failures(res.stdout)
    if res.exit_code != 0 and not failed:
        why = res.stderr.decode("utf-8", "replace").strip() or f"exit code {res.exit_code}"
        return dict.fromkeys(range(n), f"the container's shell failed: {why}")
    return failed


async def _probe_python(ctx: Context) -> bool:
    try:
        res = await ctx.client.exec(_scripts.PYTHON_PROBE, work_dir=ctx.opts.dest,
                                    timeout_seconds=30)
    except FATAL_ERRORS:
        raise
    except (MemohError, OSError):
        return False
    return res.exit_code == 0
