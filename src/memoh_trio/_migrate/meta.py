"""Batched container-side work: symlinks, permission bits and mtimes, and the final ``sync``.

Each batch is one ``Exec`` (never one RPC per entry) with a short fixed command; the script or
the records travel as stdin (:mod:`memoh_trio._scripts`). Each entry must be confirmed by its own
record: each function returns ``{index in batch: reason}`` for the entries that were not.
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import _scripts
from .._errors import MemohError, Unimplemented
from .._plan import Action
from .._scripts import Capabilities, Precision
from .context import EXEC_TIMEOUT, FATAL_ERRORS, Context, plain

#: Entries per batched Exec (symlinks, permissions and mtimes). The script or records travel
#: as stdin (never as one argument, which Linux caps at 128 KiB), so this bounds memory and the
#: time one Exec runs, not a message size.
EXEC_BATCH = 1000
#: Apply modes/mtimes and make symlinks with one python3 process per batch when the container
#: has python3 (else the shell: a chmod and a touch, or an ln, per entry). A switch so tests can
#: exercise both paths.
USE_PYTHON_META = True
#: Batches of at most this many entries use the shell where it keeps the precision (see
#: :func:`memoh_trio._scripts.meta_method`).
SHELL_META_MAX = _scripts.SHELL_META_MAX
#: Early writeback: while files are being sent, the container is asked to ``sync`` each time
#: this many more bytes went out, so the ``sync`` that must precede the rename only has the tail
#: left to flush (it took a third of a 2 x 128 MiB migration when it flushed everything at the
#: end). Best effort: a failed early ``sync`` is ignored; the final one decides.
WRITEBACK_BYTES = 32 * 1024 * 1024


async def probe(ctx: Context) -> Capabilities:
    """What the container offers (tar, touch, python3, sha256sum, stat...): one Exec with a
    short fixed command. A server without Exec, or a failed probe, offers nothing."""
    try:
        res = await ctx.exec(_scripts.PROBE_COMMAND, timeout_seconds=30)
    except FATAL_ERRORS:
        raise
    except (MemohError, OSError):  # no Exec (UNIMPLEMENTED), or no shell
        return Capabilities()
    return _scripts.parse_probe(res.stdout)


async def recreate_links(ctx: Context, caps: Capabilities,
                         batch: Sequence[Action]) -> dict[int, str]:
    """Recreate the symlinks of ``batch`` (never following anything)."""
    if USE_PYTHON_META and caps.python3 and len(batch) > SHELL_META_MAX:
        return await _exec_batch(ctx, len(batch), _scripts.PY_LINKS,
                                 _scripts.py_link_records(batch))
    return await _exec_batch(ctx, len(batch), _scripts.RUN_STDIN,
                             _scripts.links_script(batch).encode("utf-8", "surrogateescape"))


async def apply_meta(ctx: Context, caps: Capabilities,
                     batch: Sequence[Action]) -> tuple[dict[int, str], Precision]:
    """Apply permission bits and mtimes to ``batch``; returns the failures and the mtime
    precision used."""
    method = _scripts.meta_method(caps, len(batch), use_python=USE_PYTHON_META,
                                  shell_max=SHELL_META_MAX)
    precision = _scripts.method_precision(method)
    if method == "python":
        failed = await _exec_batch(ctx, len(batch), _scripts.PY_META,
                                   _scripts.py_meta_records(batch))
    else:
        script = _scripts.meta_script(batch, precision)
        failed = await _exec_batch(ctx, len(batch), _scripts.RUN_STDIN,
                                   script.encode("utf-8", "surrogateescape"))
    return failed, precision


async def flush(ctx: Context) -> str | None:
    """One ``sync`` in the container before the source may be renamed; ``None`` or why not.

    What the rename vouches for must be on the container's disk, not only in its page cache:
    one Exec for the whole tree, instead of an fsync per file on the server's hot path. A
    server without Exec (UNIMPLEMENTED) cannot be asked; its own durability applies.
    """
    try:
        res = await ctx.exec(_scripts.SYNC_COMMAND, timeout_seconds=EXEC_TIMEOUT)
    except FATAL_ERRORS:
        raise
    except Unimplemented:
        return None
    except (MemohError, OSError) as exc:
        return f"cannot flush the container's disk: {plain(exc)}"
    if res.exit_code != 0:
        why = res.stderr.decode("utf-8", "replace").strip() or f"exit code {res.exit_code}"
        return f"cannot flush the container's disk: {why}"
    if _scripts.SYNCED.encode() not in res.stdout:
        return "cannot flush the container's disk: sync printed no proof that it ran"
    return None


async def writeback(ctx: Context) -> None:
    """Early ``sync`` every :data:`WRITEBACK_BYTES` sent (runs beside the copy)."""
    mark = WRITEBACK_BYTES
    while True:
        await ctx.progress.value.wait_value(lambda s, m=mark: s.bytes_done >= m)
        try:
            await ctx.exec("sync", timeout_seconds=EXEC_TIMEOUT)
        except (MemohError, OSError):
            return  # no Exec, or it failed: the final sync reports what matters
        mark = ctx.progress.state.bytes_done + WRITEBACK_BYTES


async def _exec_batch(ctx: Context, n: int, command: str, stdin: bytes) -> dict[int, str]:
    """Run one per-entry step; ``{index: reason}`` for every entry without an ``O`` record."""
    try:
        res = await ctx.exec(command, timeout_seconds=EXEC_TIMEOUT, stdin=stdin)
    except FATAL_ERRORS:
        raise
    except (MemohError, OSError) as exc:
        return dict.fromkeys(range(n), plain(exc))
    failed = _scripts.failures(res.stdout, n, res.stderr)
    if res.exit_code != 0:
        for i, why in failed.items():
            if why.startswith(_scripts.NO_RECORD):
                failed[i] = f"{why} (exit code {res.exit_code})"
    return failed
