"""The destination before the copy: it is a directory (created if missing), what is already
there (resume), and the leftovers of an interrupted run.

One recursive ``ListDir`` up front gives rsync's quick check (same size and same mtime second →
not resent); stale temporary files (ours, the server's, tar staging directories) are deleted.
With ``--verify sha256`` the quick check is not enough to vouch for a file: :func:`check_hashes`
compares the container's SHA-256 with the source's, and a file that differs is sent again.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from .. import _scripts, _source
from .._agent.driver import AgentError
from .._agent.session import Agent
from .._dirindex import DirIndex, Listed
from .._errors import ConfigError, FailedPrecondition, MemohError, NotFound, RPCError, Status
from .._plan import Action, Kind, escape_name
from .._tarbatch import TAR_PREFIX
from .context import (
    CLEANUP_TIMEOUT,
    EXEC_TIMEOUT,
    FATAL_ERRORS,
    PART_PREFIX,
    SERVER_TEMP_PREFIX,
    Context,
    plain,
)


@dataclass
class Survey:
    """What the destination holds before the copy."""

    existing: DirIndex  # what it holds by path: resume's quick check
    links: set[str]  # its symlinks: what the WriteRaw path must never write through


async def survey(ctx: Context) -> Survey:
    """Create the destination (a dry run only checks it) and list what it holds (see
    :func:`load_existing`; a dry run deletes nothing).

    Raises:
        ConfigError: the destination is a file, or cannot be created.
        FailedPrecondition: it can be neither listed nor searched for symlinks (nothing done).
    """
    if ctx.opts.dry_run:
        await check_dest(ctx)
        return await load_existing(ctx, clean=False)
    if ctx.opts.dest:
        await make_dest(ctx)
    return await load_existing(ctx)


async def make_dest(ctx: Context) -> None:
    """Create the destination directory (with its parents; no error if it exists).

    Raises:
        ConfigError: it cannot be created (a file is there, or the server refused).
    """
    try:
        await ctx.client.mkdir(ctx.opts.dest)
    except FATAL_ERRORS:
        raise
    except RPCError as exc:
        await check_dest(ctx)
        raise ConfigError(f"cannot create the destination {ctx.opts.dest!r} in the "
                          f"container: {plain(exc)}") from None


async def check_dest(ctx: Context) -> None:
    """Raise :class:`ConfigError` when the destination exists and is not a directory."""
    if not ctx.opts.dest:
        return
    try:
        entry = await ctx.client.stat(ctx.opts.dest)
    except FATAL_ERRORS:
        raise
    except RPCError:
        return  # missing (created by the run) or not statable: the run will tell
    if not entry.is_dir:
        raise ConfigError(f"destination {ctx.opts.dest!r} is a file in the container, not "
                          "a directory: choose another --dest")


def unchanged(existing: DirIndex, action: Action) -> bool:
    """Whether the destination already has this file: a regular file of the same size and
    mtime second (:meth:`DirIndex.unchanged`)."""
    return existing.unchanged(action.rel, action.size, action.mtime_ns)


async def load_existing(ctx: Context, *, clean: bool = True) -> Survey:
    """The quick-check index of the destination and its symlinks (one recursive ListDir);
    deletes stale temporary files on the way (unless ``clean`` is false: a dry run changes
    nothing).

    A listing that fails (Memoh's server fails it on one name that is not UTF-8; a server may
    cap its size) means no resume and no cleanup, but the symlinks must still be known: a
    server that does not confine paths, like Memoh's, would write through one. They are then
    found in the container (:func:`find_links`); a dry run writes nothing and asks nothing more.
    """
    try:
        existing = await ctx.client.list_dir_index(ctx.opts.dest, recursive=True)
    except FATAL_ERRORS:
        raise
    except NotFound:  # nothing there yet
        return Survey(DirIndex(), set())
    except RPCError as exc:
        return Survey(DirIndex(), await find_links(ctx, exc) if clean else set())
    stale: list[str] = []
    staging: set[str] = set()
    ours: list[str] = []  # not the tree's: out of the index
    for rel in existing:
        top = rel.partition("/")[0]
        if top.startswith(TAR_PREFIX):  # staging dir of an interrupted tar batch
            staging.add(top)
            ours.append(rel)
        elif posixpath.basename(rel).startswith((PART_PREFIX, SERVER_TEMP_PREFIX)):
            stale.append(rel)
            ours.append(rel)
    for rel in ours:
        existing.discard(rel)
    links = existing.links()
    for rel in (stale + sorted(staging)) if clean else []:
        with trio.move_on_after(CLEANUP_TIMEOUT):
            with contextlib.suppress(MemohError):
                await ctx.client.delete_file(ctx.path(rel), recursive=rel in staging)
    return Survey(existing, links)


async def find_links(ctx: Context, failure: RPCError) -> set[str]:
    """The destination's symlinks, found by ``find`` in the container
    (:data:`memoh_trio._scripts.FIND_LINKS_COMMAND`) where its listing ended in ``failure``.

    Raises:
        FailedPrecondition: ``find`` did not prove it went through the whole destination (no
            Exec, no ``find``, an unreadable directory): the run does nothing rather than
            write blind.
    """
    try:
        res = await ctx.exec(_scripts.FIND_LINKS_COMMAND, timeout_seconds=EXEC_TIMEOUT)
        links = _scripts.parse_links_found(res.stdout)
        why = (res.stderr.decode(errors="replace").strip().splitlines() or
               [f"exit status {res.exit_code}"])[-1]
    except FATAL_ERRORS:
        raise
    except (MemohError, OSError) as exc:
        links, why = None, plain(exc)
    if links is None:
        raise FailedPrecondition(
            f"cannot list the destination {ctx.opts.dest or '/'!r} in the container "
            f"({plain(failure)}) nor find its symlinks there ({why}): nothing was copied, "
            "since a copy that cannot see them could write through one",
            status=Status.FAILED_PRECONDITION, method="ListDir")
    return links


@dataclass
class HashCheck:
    """What :func:`check_hashes` found of files resume would skip (each file in one list)."""

    same: list[Action] = field(default_factory=list)  # the container's copy hashes the same
    resend: list[Action] = field(default_factory=list)  # different, missing, or not checkable
    agent_lost: bool = False  # the agent did not answer (the rest of the run does without it)


async def check_hashes(ctx: Context, batch: Sequence[Action],
                       agent: Agent | None = None) -> HashCheck:
    """``--verify sha256`` on a rerun: a file resume would skip (same size and mtime) is only
    vouched for if the container's copy has the source's SHA-256 (one ``sha256sum`` Exec per
    batch, the path list on stdin). Anything else is sent again: a mismatch, a file the
    container cannot hash, a container without Exec or ``sha256sum``, a source that changed.

    ``agent``: the container's agent hashes them instead (each opened through descriptors,
    never through a symlink, never waiting on a FIFO; ``out.agent_lost`` if it could not).

    Raises:
        Unavailable / Unauthenticated: fatal to the run.
    """
    out = HashCheck()
    if agent is not None:
        try:
            records = await agent.hash([a.rel for a in batch])
        except AgentError:
            out.agent_lost = True
            out.resend.extend(batch)
            return out
        theirs = {a.rel: str(r.extra.get("sha256")) for a, r in zip(batch, records,
                                                                     strict=False) if r.ok}
        todo = [a for a in batch if a.rel in theirs]
        out.resend.extend(a for a in batch if a.rel not in theirs)
        await _compare(out, todo, theirs)
        return out
    listable = [a for a in batch if "\n" not in a.rel and "\\" not in a.rel]
    out.resend.extend(a for a in batch if "\n" in a.rel or "\\" in a.rel)
    if not listable:
        return out
    remote: dict[str, str] = {}
    script, stdin = _scripts.sha256_many([a.rel for a in listable])
    try:
        res = await ctx.exec(script, stdin=stdin, timeout_seconds=EXEC_TIMEOUT)
        remote = _scripts.parse_sha256_many(res.stdout)
    except FATAL_ERRORS:
        raise
    except (MemohError, OSError):  # no Exec here: every file is sent again
        remote = {}
    todo = [a for a in listable if a.rel in remote]
    out.resend.extend(a for a in listable if a.rel not in remote)
    await _compare(out, todo, remote)
    return out


async def _compare(out: HashCheck, todo: Sequence[Action], remote: dict[str, str]) -> None:
    """The source's hashes of ``todo`` against the container's: same, or sent again."""
    local = await local_hashes(todo)
    for action in todo:
        if local.get(action.rel) == remote[action.rel]:
            out.same.append(action)
        else:
            out.resend.append(action)


async def local_hashes(batch: Sequence[Action]) -> dict[str, str]:
    """``{rel: sha256}`` of the source files that could be read as the walk saw them, in a
    worker thread that a cancellation abandons (it then stops reading)."""
    stopped = False

    def work() -> dict[str, str]:
        got: dict[str, str] = {}
        for action in batch:
            if stopped:
                break
            try:
                got[action.rel] = _source.sha256_file(action, lambda: stopped)
            except (OSError, _source.SourceChanged):
                continue  # sent again: the per-file path says what is wrong with it
        return got

    try:
        return await trio.to_thread.run_sync(work, abandon_on_cancel=True)
    except trio.Cancelled:
        stopped = True
        raise


def itemize_line(action: Action, existing: Listed | None) -> str:
    """One ``rsync -n -i`` line for an entry a dry run would send (pure); names escaped as
    rsync does (:func:`memoh_trio._plan.escape_name`: a newline is ``\\#012``)."""
    name = escape_name(action.rel)
    if action.kind in (Kind.DIR, Kind.MKDIR):
        return f"cd+++++++++ {name}/"
    if action.kind is Kind.SYMLINK:
        return f"cL+++++++++ {name} -> {escape_name(action.link_target or '')}"
    if existing is None or existing.is_dir:
        return f">f+++++++++ {name}"
    size = "." if existing.size == action.size else "s"
    when = "." if existing.mtime_seconds == action.mtime_ns // 10**9 else "t"
    return f">f.{size}{when}...... {name}"
