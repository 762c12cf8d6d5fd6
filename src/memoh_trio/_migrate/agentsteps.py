"""The container agent as an executor of the lifecycle's python3 rows (:mod:`.lifecycle`).

Where the agent said hello (:attr:`.lifecycle.Known.agent`), the rows that name python3 are
carried out by requests to it over its one Exec stream, not by a python3 process per step:

* TAR: a ``files`` request per batch of small files: each written to a temporary beside its
  final name, checked (its size; with ``verify="sha256"`` its hash, read back through its
  descriptor), given its mode and mtime and renamed, a record each (``OK_META``);
* HELD: ``place`` of streamed files, whose bytes ``WriteRaw`` put in the destination's top
  directory (no directory on their way that a process in the container could swap): each
  checked, given its mode and mtime and moved into its directory through descriptors;
* META and LINK: ``meta`` and ``symlink``; empty directories: ``mkdir``; the flush: ``flush``
  (``syncfs`` of the destination's file system).

Each function returns what happened as the python3 steps do (:class:`.outcomes.BatchOutcome`,
:class:`.place.Placed`, ``{index: why}`` with events) and records nothing itself. An
:class:`~memoh_trio._agent.driver.AgentError` (the agent crashed, its stream broke) is
``PY_LOST`` for every entry of the request: the table sends them the shell's or the per-file
way, and the caller forgets the agent (:meth:`.meta.Tools.lose_python`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio

from .._agent.driver import AgentError, Record
from .._agent.session import Agent
from .._plan import Action
from . import lifecycle, tar
from .context import PART_PREFIX, Context, temp_token
from .lifecycle import Event, Phase, Step
from .outcomes import BatchOutcome

#: The mode a file gets when modes are not preserved (what ``WriteRaw`` gives under umask 022).
PLAIN_MODE = 0o644


def _meta_fields(action: Action, preserve: bool) -> dict[str, Any]:
    if not preserve:
        return {"mode": PLAIN_MODE}
    return {"mode": action.mode & 0o7777, "mtime_ns": action.mtime_ns}


def _pairs(records: Sequence[Record]) -> list[tuple[bool, str | None]]:
    return [(r.ok, r.error) for r in records]


def temporary(rel: str) -> str:
    """A temporary name beside ``rel`` for the agent to write (the survey deletes stale ones)."""
    parent, _, _ = rel.rpartition("/")
    name = PART_PREFIX + temp_token()
    return f"{parent}/{name}" if parent else name


async def send_files(ctx: Context, agent: Agent, batch: Sequence[Action]) -> BatchOutcome:
    """A batch of small files in one ``files`` request (TAR, carried out by the agent)."""
    out = BatchOutcome()
    sha = ctx.opts.verify == "sha256"
    members, out.changed = await trio.to_thread.run_sync(
        tar.read_members, batch, sha, abandon_on_cancel=True)
    lifecycle.step([a.rel for a in out.changed], Phase.TAR, Event.CHANGED)
    if not members:
        return out
    preserve = ctx.opts.preserve
    entries = []
    for action, data, digest in members:
        entry: dict[str, Any] = {"path": temporary(action.rel), "size": len(data),
                                 "final": action.rel, **_meta_fields(action, preserve)}
        if digest is not None:
            entry["sha256"] = digest
        entries.append(entry)
    actions = [a for a, _, _ in members]
    lifecycle.note([a.rel for a in actions], Step.TAR_AGENT)
    try:
        records = await agent.files(entries, b"".join(d for _, d, _ in members))
    except AgentError:
        out.python_lost = True
        records = []
    ctx.ledger.sent_whole(actions)
    out.meta_applied = preserve
    for action, event, record in zip(actions, lifecycle.agent_events(_pairs(records),
                                                                      len(actions)),
                                     [*records, *[None] * len(actions)], strict=False):
        if event is Event.OK and preserve:
            event = Event.OK_META
        phase = lifecycle.step(action.rel, Phase.TAR, event)
        if phase in (Phase.MOVED, Phase.DONE):
            out.copied.append(action)
            continue
        if phase is Phase.RESEND:
            out.resend.append(action)
        else:
            why = (record.error if record is not None else None) or "failed"
            out.failed.append((action, why if event is Event.BAD
                               else f"cannot move the file into place: {why}"))
    return out


async def place(ctx: Context, agent: Agent, batch: Sequence[tuple[Action, str]],
                hashes: dict[str, str] | None = None) -> tuple[list[Event], list[str | None]]:
    """Place held files (HELD, carried out by the agent): ``(action, temporary relative to the
    destination)`` each; their events and the agents' reasons (``None``: placed).

    ``hashes``: the source's SHA-256 by path, checked by the agent before the rename."""
    preserve = ctx.opts.preserve
    entries = []
    for action, part in batch:
        entry: dict[str, Any] = {"tmp": part, "path": action.rel, "size": action.size,
                                 **_meta_fields(action, preserve)}
        if hashes is not None and action.rel in hashes:
            entry["sha256"] = hashes[action.rel]
        entries.append(entry)
    lifecycle.note([a.rel for a, _ in batch], Step.PLACE_AGENT)
    try:
        records = await agent.place(entries)
    except AgentError:
        records = []
    events = lifecycle.agent_events(_pairs(records), len(batch))
    whys: list[str | None] = [r.error or "failed" if not r.ok else None for r in records]
    whys += [None] * (len(batch) - len(whys))
    return events, whys


async def links(agent: Agent, batch: Sequence[Action],
                preserve: bool) -> tuple[dict[int, str], list[Event]]:
    """Symlinks (LINK, carried out by the agent): ``{index: why not}`` and the events."""
    entries = []
    for action in batch:
        entry: dict[str, Any] = {"path": action.rel, "target": action.link_target or "",
                                 "tmp": PART_PREFIX + temp_token()}
        if preserve:
            entry["mtime_ns"] = action.mtime_ns
        entries.append(entry)
    lifecycle.note([a.rel for a in batch], Step.LINK_AGENT)
    return await _per_entry(agent.symlink, entries)


async def meta(agent: Agent, batch: Sequence[Action]) -> tuple[dict[int, str], list[Event]]:
    """Modes and mtimes (META, carried out by the agent): ``{index: why not}`` and the events."""
    entries = [{"path": a.rel, **_meta_fields(a, True)} for a in batch]
    lifecycle.note([a.rel for a in batch], Step.META_AGENT)
    return await _per_entry(agent.meta, entries)


async def _per_entry(request: Any, entries: list[dict[str, Any]],
                     ) -> tuple[dict[int, str], list[Event]]:
    try:
        records: list[Record] = await request(entries)
    except AgentError as exc:
        return dict.fromkeys(range(len(entries)), str(exc)), [Event.PY_LOST] * len(entries)
    events = lifecycle.agent_events(_pairs(records), len(entries))
    failed = {i: (records[i].error if i < len(records) else None) or "no record from the agent"
              for i, event in enumerate(events) if event is not Event.OK}
    return failed, events
