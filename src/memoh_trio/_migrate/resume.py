"""Resume: what is already at the destination, and the leftovers of an interrupted run.

One recursive ``ListDir`` up front gives rsync's quick check (same size and same mtime second →
not resent); stale temporary files (ours, the server's, tar staging directories) are deleted.
"""

from __future__ import annotations

import contextlib
import math
import posixpath
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

import trio

from .._errors import MemohError, RPCError
from .._plan import Action
from .._tarbatch import TAR_PREFIX
from .context import CLEANUP_TIMEOUT, FATAL_ERRORS, PART_PREFIX, SERVER_TEMP_PREFIX, Context

if TYPE_CHECKING:
    from .._client import FileEntry


def mtime_seconds(mod_time: str) -> int | None:
    """Whole seconds of a ListDir ``mod_time`` (RFC 3339), ``None`` if unparsable."""
    try:
        return math.floor(datetime.fromisoformat(mod_time.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def unchanged(existing: Mapping[str, FileEntry], action: Action) -> bool:
    """Whether the destination already has this file (same size, same mtime second)."""
    e = existing.get(action.rel)
    if e is None or e.is_dir or e.size != action.size:
        return False
    return mtime_seconds(e.mod_time) == action.mtime_ns // 1_000_000_000


async def load_existing(ctx: Context, *, clean: bool = True) -> dict[str, FileEntry]:
    """The quick-check index of the destination; deletes stale temporary files on the way
    (unless ``clean`` is false: a dry run changes nothing)."""
    try:
        entries = await ctx.client.list_dir(ctx.opts.dest, recursive=True)
    except FATAL_ERRORS:
        raise
    except RPCError:  # missing destination, or a listing too big for one message: no resume
        return {}
    existing: dict[str, FileEntry] = {}
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
            existing[rel] = e
    for rel in (stale + sorted(staging)) if clean else []:
        with trio.move_on_after(CLEANUP_TIMEOUT):
            with contextlib.suppress(MemohError):
                await ctx.client.delete_file(ctx.path(rel), recursive=rel in staging)
    return existing
