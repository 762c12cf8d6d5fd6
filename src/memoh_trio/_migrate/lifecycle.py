"""The life of one entry after its route: phases, events and the next phase, in one table.

Rule 1 (as in h11's ``_state.py``): every transition of an entry's life is in :data:`TABLE`, and
every choice between ways (hold a streamed file for python3 or check it at once, python3 or the
shell for a batch) is a function of what is known (:class:`Known`: the container's tools, the
verify mode, the counts of the run), never of which task finished first. No I/O here: the
executors (:mod:`.run` with :mod:`.stream`, :mod:`.tar`, :mod:`.place`, :mod:`.meta`; or an agent
in the container, later) carry out the step a phase names and report its outcome as an
:class:`Event` per entry; :func:`advance` says where the entry goes next, and an event the table
does not allow raises :class:`LifecycleError` (a bug: nothing changes).

The first decision is :func:`memoh_trio._plan.route` (tar batch, stream, link, resume...); the
phases below take it from there. A step's records become events through :func:`events_of`:
an ``O`` record counts only if the step exited 0 (a step that exits non-zero after printing
records is not believed: those entries are checked again), an entry without a record is
``LOST``, and a python3 step that did not vouch for its entries is ``PY_LOST``: python3 is then
known broken (:meth:`Known.python_lost`) and the rest of the run does without it, the entries
taking the shell's way (links, modes and mtimes) or the per-file way (files).

=========  ========================================  ========================================
phase      step the executor carries out             events and where they lead
=========  ========================================  ========================================
TAR        a tar batch: unpack in a staging dir,     OK -> MOVED; OK_META -> DONE;
           check, move (python3 mover with modes     LOST/PY_LOST -> RESEND; CHANGED -> STREAM;
           and mtimes, or a listing + ``mv``)        BAD/REFUSED -> FAILED
STREAM     WriteRaw to a temporary sibling,          SENT -> SENT; REFUSED -> FAILED
           checked on this side
SENT       (decision, :func:`after_sent`)            HOLD -> HELD; CHECK -> CHECK
HELD       wait for a placement batch; python3       OK_META -> DONE; OK -> MOVED;
           checks, gives modes/mtimes, renames       PER_FILE -> CHECK; PY_LOST -> RECHECK;
                                                     BAD/REFUSED -> FAILED
CHECK      container's Stat (sha256: its hash)       OK -> MOVED; BAD/REFUSED/GONE -> FAILED
           of the temporary file, then Rename
RECHECK    a held file no record vouched for:        OK -> MOVED; GONE -> RESEND;
           Stat of its temporary file, Rename        BAD/REFUSED -> FAILED
RESEND     the per-file way once more (STREAM,       SENT -> CHECK; REFUSED -> FAILED
           then CHECK: never held again)
HASH       resume with sha256: the container's       OK -> UNCHANGED; LOST -> STREAM
           hash of its copy against the source's
UNCHANGED  resume: the destination has it            META_DUE -> META; NO_META -> DONE
MOVED      at its final path                         META_DUE -> META; NO_META -> DONE
META       modes and mtimes (python3 or shell)       OK -> DONE; PY_LOST -> META_SHELL;
                                                     LOST/REFUSED -> FAILED
META_SHELL the same, the shell's way                 OK -> DONE; LOST/REFUSED -> FAILED
LINK       symlinks (python3 or shell)               OK -> DONE; PY_LOST -> LINK_SHELL;
                                                     LOST/REFUSED -> FAILED
LINK_SHELL the same, the shell's way                 OK -> DONE; LOST/REFUSED -> FAILED
MKDIR      an empty directory (Mkdir)                OK -> DONE; REFUSED -> FAILED
=========  ========================================  ========================================

Two executors carry out the rows that name python3: one python3 process per step (an Exec
each), or the container's agent (:mod:`memoh_trio._agent`: one python3 for the whole run, spoken
to over one Exec, every path opened through directory descriptors), used wherever it said hello
(:attr:`Known.agent`). The agent carries out TAR as a ``files`` request (each file written to a
temporary, checked, given its mode and mtime and renamed: ``OK_META``), HELD as ``place`` (the
streamed file's temporary in the destination's top directory), META and LINK as ``meta`` and
``symlink``, and the flush; an agent that crashes or whose stream breaks is ``PY_LOST`` for
every entry it had not answered for, exactly as a python3 step that died.

What an executor must be able to do, so that another one can carry out the same table: TAR
"unpack this archive in a staging directory, check each member against this size or SHA-256,
move it to its final path (with its mode and mtime), a record each"; HELD "these parked files:
check each holds N bytes, give it its mode and mtime, rename it onto its final name, a record
each"; CHECK / RECHECK "Stat this temporary file, Rename it"; HASH "the SHA-256 of these regular
files"; META / LINK "these modes and mtimes / these symlinks, never through a symlink, a record
each"; and, outside the table, the flush before the rename. An agent answers with the same
events (a record under a clean exit is ``OK``; anything it cannot vouch for is ``LOST``), and
the run goes on as here.

A regular file is counted copied when it enters MOVED (or DONE from OK_META), unchanged when it
enters UNCHANGED, failed when it enters FAILED (:func:`counts_as`); the run counts in one place.
No file is sent more than twice (STREAM or TAR, then at most one RESEND), so no cycle.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Generic, Literal, TypeVar

from .._scripts import CHECK_FAILED, MOVE_FAILED, NO_RECORD, SHELL_META_MAX

T = TypeVar("T")


class Phase(enum.Enum):
    """Where an entry is in its life (see the module table)."""

    TAR = "tar"
    STREAM = "stream"
    SENT = "sent"
    HELD = "held"
    CHECK = "check"
    RECHECK = "recheck"
    RESEND = "resend"
    HASH = "hash"
    UNCHANGED = "unchanged"
    MOVED = "moved"
    META = "meta"
    META_SHELL = "meta-shell"
    LINK = "link"
    LINK_SHELL = "link-shell"
    MKDIR = "mkdir"
    DONE = "done"
    FAILED = "failed"


class Event(enum.Enum):
    """What a step reports for one entry, or a decision taken from what is known."""

    OK = "done, vouched for (an O record of a step that exited 0; a call that succeeded)"
    OK_META = "done, and its mode and mtime applied (the python3 mover's O record, exit 0)"
    LOST = "not vouched for: no record, an O under a non-zero exit, mv failed, batch failed"
    PY_LOST = "a python3 step did not vouch for it (crashed, output cut, non-zero exit)"
    BAD = "a check failed: size or hash not what was sent"
    REFUSED = "failed for a reason of its own (a conflict, a refused call, a stalled stream)"
    CHANGED = "the source changed while it was read"
    SENT = "its bytes were sent whole and checked on this side"
    GONE = "its temporary file is not in the container"
    HOLD = "decision: held for a placement batch"
    CHECK = "decision: checked and renamed one by one, now"
    PER_FILE = "decision: a placement batch goes the per-file way"
    META_DUE = "decision: modes and mtimes are preserved"
    NO_META = "decision: modes and mtimes are not preserved"


_P, _E = Phase, Event

#: Rule 1: (phase, event) -> next phase. Nothing else moves an entry.
TABLE: Mapping[tuple[Phase, Event], Phase] = {
    (_P.TAR, _E.OK): _P.MOVED,
    (_P.TAR, _E.OK_META): _P.DONE,
    (_P.TAR, _E.LOST): _P.RESEND,
    (_P.TAR, _E.PY_LOST): _P.RESEND,
    (_P.TAR, _E.CHANGED): _P.STREAM,
    (_P.TAR, _E.BAD): _P.FAILED,
    (_P.TAR, _E.REFUSED): _P.FAILED,
    (_P.STREAM, _E.SENT): _P.SENT,
    (_P.STREAM, _E.REFUSED): _P.FAILED,
    (_P.SENT, _E.HOLD): _P.HELD,
    (_P.SENT, _E.CHECK): _P.CHECK,
    (_P.HELD, _E.OK_META): _P.DONE,
    (_P.HELD, _E.OK): _P.MOVED,
    (_P.HELD, _E.PER_FILE): _P.CHECK,
    (_P.HELD, _E.PY_LOST): _P.RECHECK,
    (_P.HELD, _E.BAD): _P.FAILED,
    (_P.HELD, _E.REFUSED): _P.FAILED,
    (_P.CHECK, _E.OK): _P.MOVED,
    (_P.CHECK, _E.BAD): _P.FAILED,
    (_P.CHECK, _E.REFUSED): _P.FAILED,
    (_P.CHECK, _E.GONE): _P.FAILED,
    (_P.RECHECK, _E.OK): _P.MOVED,
    (_P.RECHECK, _E.GONE): _P.RESEND,
    (_P.RECHECK, _E.BAD): _P.FAILED,
    (_P.RECHECK, _E.REFUSED): _P.FAILED,
    (_P.RESEND, _E.SENT): _P.CHECK,
    (_P.RESEND, _E.REFUSED): _P.FAILED,
    (_P.HASH, _E.OK): _P.UNCHANGED,
    (_P.HASH, _E.LOST): _P.STREAM,
    (_P.UNCHANGED, _E.META_DUE): _P.META,
    (_P.UNCHANGED, _E.NO_META): _P.DONE,
    (_P.MOVED, _E.META_DUE): _P.META,
    (_P.MOVED, _E.NO_META): _P.DONE,
    (_P.META, _E.OK): _P.DONE,
    (_P.META, _E.PY_LOST): _P.META_SHELL,
    (_P.META, _E.LOST): _P.FAILED,
    (_P.META, _E.REFUSED): _P.FAILED,
    (_P.META_SHELL, _E.OK): _P.DONE,
    (_P.META_SHELL, _E.LOST): _P.FAILED,
    (_P.META_SHELL, _E.REFUSED): _P.FAILED,
    (_P.LINK, _E.OK): _P.DONE,
    (_P.LINK, _E.PY_LOST): _P.LINK_SHELL,
    (_P.LINK, _E.LOST): _P.FAILED,
    (_P.LINK, _E.REFUSED): _P.FAILED,
    (_P.LINK_SHELL, _E.OK): _P.DONE,
    (_P.LINK_SHELL, _E.LOST): _P.FAILED,
    (_P.LINK_SHELL, _E.REFUSED): _P.FAILED,
    (_P.MKDIR, _E.OK): _P.DONE,
    (_P.MKDIR, _E.REFUSED): _P.FAILED,
}

#: Phases an entry never leaves.
FINAL = frozenset({Phase.DONE, Phase.FAILED})


class LifecycleError(Exception):
    """An event the table does not allow in that phase (a bug in an executor)."""


def advance(phase: Phase, event: Event) -> Phase:
    """The phase after ``event`` (pure). Raises :class:`LifecycleError`, changing nothing,
    when the table has no such step."""
    try:
        return TABLE[phase, event]
    except KeyError:
        raise LifecycleError(f"no step from {phase.name} on {event.name}") from None


Counted = Literal["copied", "unchanged", "failed"]


def counts_as(old: Phase, new: Phase) -> Counted | None:
    """What entering ``new`` from ``old`` counts for a regular file (the ledger's one rule):
    copied once it is at its final path (MOVED, or DONE with its mode and mtime applied),
    unchanged, or failed; nothing for the other steps."""
    if new is Phase.FAILED:
        return "failed"
    if new is Phase.UNCHANGED:
        return "unchanged"
    if new is Phase.MOVED or (new is Phase.DONE and old in (Phase.TAR, Phase.HELD)):
        return "copied"
    return None


# ------------------------------------------------------------------ what is known


class Python(enum.Enum):
    """What the run knows of the container's python3."""

    UNKNOWN = "not asked yet, or no answer yet"
    YES = "there"
    NO = "not there"
    LOST = "there, but a step of it did not vouch for its entries: not used any more"


@dataclass(frozen=True)
class Known:
    """What the decisions read: capabilities learned, and the run's options."""

    exec: bool = False  # the container's shell or agent answered: Exec steps can run
    python: Python = Python.UNKNOWN
    agent: bool = False  # the container's agent said hello: it carries out python3's rows
    verify: Literal["size", "sha256"] = "size"
    preserve: bool = True

    def python_answered(self, there: bool) -> Known:
        """Learned: python3 is there or not (a python3 known lost stays lost)."""
        if self.python is Python.LOST:
            return self
        return replace(self, python=Python.YES if there else Python.NO)

    def python_lost(self) -> Known:
        """Learned: a python3 step (or the agent) did not vouch for its entries."""
        return replace(self, python=Python.LOST, agent=False)

    @property
    def python_usable(self) -> bool:
        return self.python is Python.YES


def after_sent(known: Known) -> Event:
    """A file streamed (first send), its bytes checked on this side: held for a placement batch
    (python3 may place it, with its mode and mtime, without a Stat and a Rename each) or checked
    and renamed now. Held only with ``verify="size"`` (sha256 is checked in the container, one
    file at a time), where the container runs Exec steps and python3 is not known to be absent
    or lost. Whether python3 then places it is decided per batch (:func:`python_places`), from
    counts that are final by then. With the agent, held with sha256 too: it hashes the file
    through the descriptor it renames."""
    if (known.verify == "size" or known.agent) and known.exec \
            and known.python in (Python.UNKNOWN, Python.YES):
        return Event.HOLD
    return Event.CHECK


def python_wanted(batch: int, tar_files: int, held_total: int) -> bool:
    """Whether a placement batch asks python3 (and waits for its answer): it has more files
    than the shell's way handles well, or python3 is asked anyway for the tar batches, or the
    run holds that many files in all. Full batches are formed only past
    :data:`SHELL_META_MAX` files, and the last one once every entry is routed: the counts are
    then final, so the answer depends on the tree, not on timing."""
    return max(batch, tar_files, held_total) > SHELL_META_MAX


def python_places(known: Known, wanted: bool) -> bool:
    """Whether python3 places a batch of held files (their ``OK_META``/``OK`` records follow);
    else each takes ``PER_FILE``. The agent places every batch (it starts no process)."""
    return known.agent or (wanted and known.python_usable)


Executor = Literal["agent", "python", "shell"]


def tar_mover(known: Known, n: int) -> Executor:
    """Who checks and moves a batch of ``n`` small files: the agent (one ``files`` request),
    python3 (with modes and mtimes) for more than :data:`SHELL_META_MAX` files where it is
    usable, else a listing and ``mv``."""
    if known.agent:
        return "agent"
    return "python" if n > SHELL_META_MAX and known.python_usable else "shell"


def agent_events(records: Sequence[tuple[bool, str | None]], n: int) -> list[Event]:
    """The events of an agent request's ``n`` entries from its records, ``(ok, error)`` in
    entry order (pure): ``OK``; ``BAD`` for a failed check (the error starts with
    :data:`CHECK_FAILED`); ``REFUSED`` for any other error (a symlink or a non-directory in
    the way); ``PY_LOST`` for an entry without a record."""
    out: list[Event] = []
    for i in range(n):
        if i >= len(records):
            out.append(Event.PY_LOST)
            continue
        ok, why = records[i]
        out.append(Event.OK if ok else Event.BAD if (why or "").startswith(CHECK_FAILED)
                   else Event.REFUSED)
    return out


def tar_asks_python(n_tar_files: int) -> bool:
    """Whether the tar batches need python3's answer: once more than :data:`SHELL_META_MAX`
    files are routed to them (deterministic: counted in walk order)."""
    return n_tar_files > SHELL_META_MAX


def meta_done_event(known: Known) -> Event:
    """After MOVED or UNCHANGED: modes and mtimes to apply, or not."""
    return Event.META_DUE if known.preserve else Event.NO_META


def events_of(records: Mapping[int, str | None], exit_code: int, n: int, *,
              python: bool) -> list[Event]:
    """The events of a step's ``n`` entries from its records (``None``: an ``O`` record; else
    the ``F`` reason, :data:`NO_RECORD` when none was printed) and its exit code (pure).

    An ``O`` counts only under exit 0; an entry a python3 step did not vouch for is
    ``PY_LOST`` (the shell's or the per-file way takes it); a check that failed is ``BAD``;
    any other ``F`` reason (a conflict) is ``REFUSED``. An ``F`` is believed whatever the exit
    code: believing a failure never renames anything."""
    out: list[Event] = []
    lost = Event.PY_LOST if python else Event.LOST
    for i in range(n):
        why = records.get(i, NO_RECORD)
        if why is None:
            out.append(Event.OK if exit_code == 0 else lost)
        elif why.startswith(NO_RECORD) or why == MOVE_FAILED:
            out.append(lost)
        elif why.startswith(CHECK_FAILED):
            out.append(Event.BAD)
        else:
            out.append(Event.REFUSED)
    return out


def python_failed(records: Mapping[int, str | None], exit_code: int) -> bool:
    """Whether a python3 step failed as a program (it exited non-zero, or printed no record for
    some entry: crashed, or its output was cut), so python3 is not used any more in the run."""
    return exit_code != 0 or any(why is not None and why.startswith(NO_RECORD)
                                 for why in records.values())


def step_failed(n: int, *, python: bool) -> list[Event]:
    """The events of a step that failed as a whole (the Exec failed, tar failed, nothing was
    printed for anyone)."""
    return [Event.PY_LOST if python else Event.LOST] * n


# ------------------------------------------------------------------ the run's flow of held files


@dataclass
class Flow(Generic[T]):
    """The counts the decisions read and the held files of one run (pure; the run owns one).

    A stream counts from its start to its end, whoever started it (the walk, a tar batch's
    fallback, a re-send after a hash check): :meth:`rest_due` is true once every entry is routed
    and no stream is running, and the held files left are placed at once (5306aab counted
    only the walk's streams in and every stream out: after a tar batch fell back the count
    went negative and the last held files waited for the end of the run)."""

    batch_size: int
    tar_files: int = 0
    held_total: int = 0
    streams: int = 0
    routed_all: bool = False
    _held: list[T] = field(default_factory=list)

    def routed_to_tar(self) -> bool:
        """One more file routed to a tar batch; whether python3 must now be asked."""
        self.tar_files += 1
        return self.tar_files == SHELL_META_MAX + 1

    def stream_started(self) -> None:
        self.streams += 1

    def stream_ended(self) -> None:
        if self.streams <= 0:
            raise LifecycleError("a stream ended that never started")
        self.streams -= 1

    def hold(self, item: T) -> list[T] | None:
        """Hold one sent file; the batch to place if it is now full."""
        self._held.append(item)
        self.held_total += 1
        return self.take() if len(self._held) >= self.batch_size else None

    def rest_due(self) -> bool:
        """Every entry routed, no stream running, files held: place them now."""
        return self.routed_all and self.streams == 0 and bool(self._held)

    def take(self) -> list[T]:
        batch, self._held = self._held, []
        return batch

    def wants_python(self, batch: int) -> bool:
        return python_wanted(batch, self.tar_files, self.held_total)


# ------------------------------------------------------------------ tracing (tests)


class Step(enum.Enum):
    """A step carried out in the container for a file, as a trace names it."""

    TAR_PYTHON = "tar+python3 mover"
    TAR_SHELL = "tar+listing+mv"
    STREAM = "WriteRaw"
    PLACE_PYTHON = "python3 placement"
    STAT_RENAME = "Stat+Rename"
    SHA256SUM = "sha256sum+Rename"
    READ_BACK = "ReadRaw read-back+Rename"
    RESUME_HASH = "resume: sha256sum"
    META_PYTHON = "modes/mtimes by python3"
    META_SHELL = "modes/mtimes by the shell"
    LINK_PYTHON = "symlink by python3"
    LINK_SHELL = "symlink by the shell"
    TAR_AGENT = "agent: files"
    PLACE_AGENT = "agent: place"
    META_AGENT = "modes/mtimes by the agent"
    LINK_AGENT = "symlink by the agent"
    MKDIR_AGENT = "agent: mkdir"
    HASH_AGENT = "resume: the agent's hash"


@dataclass
class Trace:
    """What the runs inside :func:`tracing` did, per path: the container steps, in order, and
    the rows of :data:`TABLE` taken."""

    steps: dict[str, list[Step]] = field(default_factory=dict)
    rows: dict[str, list[tuple[Phase, Event]]] = field(default_factory=dict)

    def rows_taken(self) -> set[tuple[Phase, Event]]:
        return {row for rows in self.rows.values() for row in rows}


_TRACE: ContextVar[Trace | None] = ContextVar("memoh_trio_trace", default=None)


@contextlib.contextmanager
def tracing() -> Iterator[Trace]:
    """Record what the runs inside the block do, path by path (tests: which way each file
    took; the same tree into the same container must take the same ways)."""
    trace = Trace()
    token = _TRACE.set(trace)
    try:
        yield trace
    finally:
        _TRACE.reset(token)


def _rels(rels: Sequence[str] | str) -> Sequence[str]:
    return [rels] if isinstance(rels, str) else rels


def note(rels: Sequence[str] | str, step: Step) -> None:
    """Trace ``step`` for ``rels`` (nothing unless :func:`tracing` is on)."""
    trace = _TRACE.get()
    if trace is not None:
        for rel in _rels(rels):
            trace.steps.setdefault(rel, []).append(step)


def step(rels: Sequence[str] | str, phase: Phase, event: Event) -> Phase:
    """:func:`advance` for the entries ``rels``, traced (the executors move entries with this)."""
    new = advance(phase, event)
    trace = _TRACE.get()
    if trace is not None:
        for rel in _rels(rels):
            trace.rows.setdefault(rel, []).append((phase, event))
    return new
