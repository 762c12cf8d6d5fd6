"""Batched container-side work: symlinks, permission bits and mtimes, hash checks, ``sync``.

Each batch is one ``Exec`` (never one RPC per entry) with a short fixed command; the script or
the records travel as stdin (:mod:`memoh_trio._scripts`). Each entry must be confirmed by its own
record: each function returns ``{index in batch: reason}`` for the entries that were not.

:class:`Tools` is what the container offers (probed once per run). :class:`Batches` owns the
queues of entries waiting for a batched Exec, says when a batch is due and runs one, returning a
:class:`BatchResult` (done, failed and why, to send again); the run records it and starts the
batches in its nursery. Nothing here calls back into the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, cast

import trio

from .. import _scripts
from .._agent.driver import AgentError, AgentUnavailable
from .._agent.session import Agent, ExecClient, open_agent
from .._errors import MemohError, Unimplemented
from .._plan import Action
from .._progress import ProgressState
from .._scripts import Capabilities, Precision
from .._scripts.flush import flush_command, parse_flush
from . import agentsteps, lifecycle, resume
from .context import (
    EXEC_TIMEOUT,
    FATAL_ERRORS,
    Context,
    Deadlined,
    Verify,
    control_timeout,
    plain,
)
from .lifecycle import Event, Known, Phase, Python, Step
from .outcomes import BatchResult as BatchResult
from .outcomes import Job as Job

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
#: Start the container's agent (one python3 for the run, :mod:`memoh_trio._agent`) where it
#: runs; off, one python3 process per step as before (tests exercise both).
USE_AGENT = True
#: Early writeback: while files are being sent, the container is asked to ``sync`` each time
#: this many more bytes went out, so the ``sync`` that must precede the rename only has the tail
#: left to flush (it took a third of a 2 x 128 MiB migration when it flushed everything at the
#: end). Best effort: a failed early ``sync`` is ignored; the final one decides.
WRITEBACK_BYTES = 32 * 1024 * 1024
#: A tar batch with at least this many files copied gets its own metadata Exec as soon as it
#: is done (fewer: they join the next metadata batch).
TAR_META_MIN = 64

@dataclass(frozen=True)
class Batch:
    """Entries for one batched Exec."""

    job: Job
    actions: list[Action]


class Tools:
    """What the container offers, probed once per run: the shell's tools before the copy;
    python3 only once work that may use it starts (:meth:`ask_python`: a tar batch of more than
    :data:`SHELL_META_MAX` files, beside the reading of its files; or a batch that would use it,
    :meth:`settled` with a context). A run without such work never starts python3 in the
    container: 2 x 128 MiB into Memoh's Go server, where the probe used to run beside the copy,
    took 0.308 s instead of 0.356 (medians of 13, ``benchmarks/ab_clients.py``). Work that may
    use python3 waits for :meth:`settled`."""

    def __init__(self, verify: Verify = "size", preserve: bool = True) -> None:
        self.caps = Capabilities()
        self._python_asked = False
        self._python_known = trio.Event()
        self._python_lost = False
        self._verify: Verify = verify
        self._preserve = preserve
        #: the container's agent, while it carries out python3's rows (see :meth:`start`)
        self.agent: Agent | None = None
        self._agent_done = trio.Event()
        self._agent_scope = trio.CancelScope()
        self._shell_lock = trio.Lock()
        self._shell_probed = False

    @property
    def known(self) -> Known:
        """What the lifecycle's decisions read (:class:`.lifecycle.Known`)."""
        if self._python_lost:
            python = Python.LOST
        elif not self._python_known.is_set():
            python = Python.UNKNOWN
        else:
            python = Python.YES if self.caps.python3 and USE_PYTHON_META else Python.NO
        return Known(exec=self.caps.probed, python=python, verify=self._verify,
                     preserve=self._preserve,
                     agent=self.agent is not None and not self._python_lost)

    def lose_python(self) -> None:
        """A python3 step (or the agent) did not vouch for its entries: the rest of the run
        does without python3 (the shell's way, or the per-file way)."""
        self._python_lost = True

    async def probe(self, ctx: Context) -> None:
        """Ask the container for its tools, python3 aside (see :meth:`probe_python`)."""
        self.caps = await probe(ctx, python=False)

    async def start(self, ctx: Context, client: ExecClient, nursery: trio.Nursery) -> None:
        """Start the container's agent in ``nursery`` (it lives until :meth:`stop`); its hello
        is the probe: python3 runs, Exec works. Without it, the shell is probed as before:
        a container without python3 (exit 127), or an agent that could not start, takes the
        shell's rows; a server without Exec has none. ``client``: without the control
        deadline (the agent's Exec lasts the run)."""
        use_agent = USE_AGENT and ctx.opts.agent
        if use_agent:
            try:
                agent = await nursery.start(self._agent_task, client, ctx.opts.dest)
            except AgentError as exc:
                cause = exc.__cause__
                if isinstance(cause, FATAL_ERRORS):
                    raise cause from None
                if isinstance(cause, Unimplemented):  # no Exec: nothing to probe
                    self._python_asked = True
                    self._python_known.set()
                    return
                if not isinstance(exc, AgentUnavailable):
                    self._python_lost = True  # python3 is there but did not work
            else:
                stall = ctx.opts.stall_timeout
                # Each request gets the control calls' deadline: a link that stops
                # forwarding ends the run (Unavailable) instead of waiting for ever.
                self.agent = agent if stall is None else cast(
                    Agent, Deadlined(agent, control_timeout(stall)))
                self.caps = Capabilities(probed=True, python3=True)
                self._python_asked = True
                self._python_known.set()
                return
        await self.probe(ctx)
        if use_agent:  # its answer stands for python3's probe
            self._python_asked = True
            self._python_known.set()

    async def _agent_task(self, client: ExecClient, dest: str, *,
                          task_status: trio.TaskStatus[Agent]) -> None:
        started = False
        try:
            with self._agent_scope:
                async with open_agent(client, dest) as agent:
                    task_status.started(agent)
                    started = True
                    await self._agent_done.wait()
        except AgentError:
            if not started:
                raise
            # Lost during the run: each request it did not answer was PY_LOST already.
            self._python_lost = True

    def stop(self, *, abandon: bool = False) -> None:
        """The run needs the agent no more: it says bye and ends; ``abandon`` (the run failed,
        or its link is lost): its Exec call is cancelled at once, and the server ends it."""
        self._agent_done.set()
        if abandon:
            self._agent_scope.cancel()

    async def shell(self, ctx: Context) -> Capabilities:
        """The shell's tools, probed now if the agent stood for the probe (its loss sends the
        rest of the run the shell's way)."""
        async with self._shell_lock:
            if self.agent is not None and not self._shell_probed:
                self._shell_probed = True
                self.caps = replace(await probe(ctx, python=False), python3=False)
        return self.caps

    def ask_python(self, ctx: Context, nursery: trio.Nursery) -> None:
        """Start asking for python3 in ``nursery``, unless it was asked already."""
        if not self._python_asked:
            self._python_asked = True
            nursery.start_soon(self.probe_python, ctx)

    async def probe_python(self, ctx: Context) -> None:
        """Ask for python3 (once the shell's tools are known; without them there is no Exec,
        and nothing is asked). A fatal error is the run's (:meth:`~.ledger.Ledger.lose`); the
        answer is then "no python3"."""
        self._python_asked = True
        try:
            if self.caps.probed:
                try:
                    python3, exe = await probe_python(ctx)
                except FATAL_ERRORS as exc:
                    ctx.ledger.lose(exc)
                    return
                self.caps = replace(self.caps, python3=python3, python_exe=exe)
        finally:
            self._python_known.set()

    async def settled(self, ctx: Context | None = None) -> Capabilities:
        """The capabilities, once python3 was asked; with ``ctx``, asked now if nothing has."""
        if ctx is not None and not self._python_asked:
            await self.probe_python(ctx)
        await self._python_known.wait()
        return self.caps

    async def py_move(self) -> str | None:
        """How to run python3 to check and move a tar batch, or ``None`` (asked before the
        batch is packed: the python3 probe runs beside the reading of its files)."""
        caps = await self.settled()
        return caps.python_exe if self.known.python_usable else None

    def python_ready(self) -> str | None:
        """How to run python3, if it was asked already and is there (``None`` otherwise:
        nothing is asked or waited for here)."""
        return self.caps.python_exe if self.known.python_usable else None

    def python_may_serve(self, batch: Batch) -> bool:
        """Whether python3, if the container has it, would carry out ``batch`` (so its answer
        is needed first): the rules of :func:`recreate_links` and :func:`apply_meta`."""
        n = len(batch.actions)
        if not USE_PYTHON_META or batch.job == "hash":
            return False
        if batch.job == "links":
            return n > SHELL_META_MAX
        with_python = replace(self.caps, python3=True)
        return _scripts.meta_method(with_python, n, shell_max=SHELL_META_MAX) == "python"


class Batches:
    """The entries of one run waiting for a batched Exec: symlinks, resume's hash checks, and
    modes/mtimes (files as they are copied; directories at the end, deepest first).

    The ``add`` methods return a :class:`Batch` once one is due (the run starts it);
    :meth:`run` carries one out and returns what happened.
    """

    def __init__(self, ctx: Context, tools: Tools) -> None:
        self._ctx = ctx
        self._tools = tools
        self._preserve = ctx.opts.preserve
        self._queues: dict[Job, list[Action]] = {"links": [], "hash": [], "meta": []}
        self._dirs: list[Action] = []

    def add(self, job: Job, action: Action) -> Batch | None:
        """Queue ``action``; the batch if it is now full. ``meta`` queues nothing unless the run
        preserves modes and mtimes."""
        if job == "meta" and not self._preserve:
            return None
        queue = self._queues[job]
        queue.append(action)
        return self._take(job) if len(queue) >= EXEC_BATCH else None

    def add_dir(self, action: Action) -> None:
        """Queue a directory's mode and mtime for the end of the run (see :meth:`final`)."""
        if self._preserve:
            self._dirs.append(action)

    def tar_copied(self, actions: Sequence[Action]) -> list[Batch]:
        """The modes and mtimes of files a tar batch copied (and did not apply itself). Many get
        a batch at once, while the rest is still being sent, rather than all at the end (mixed
        tree: 0.22 s after the last move, on the critical path); a few join the queue."""
        if not self._preserve:
            return []
        if len(actions) >= TAR_META_MIN:
            return [Batch("meta", list(actions))]
        return [b for b in (self.add("meta", a) for a in actions) if b is not None]

    def walk_done(self) -> list[Batch]:
        """The symlinks and hash checks still queued once the walk ended."""
        return [self._take(job) for job in ("links", "hash") if self._queues[job]]

    def final(self) -> list[Batch]:
        """The modes and mtimes still queued once the copy is over: the files finished after the
        last full batch, then the directories, deepest first, once nothing is written in them
        (a file's chmod/utime does not touch its directory's mtime)."""
        dirs = sorted(self._dirs, key=lambda a: a.rel.count("/"), reverse=True)
        entries = self._take("meta").actions + dirs
        self._dirs = []
        return [Batch("meta", entries[i:i + EXEC_BATCH])
                for i in range(0, len(entries), EXEC_BATCH)]

    def _take(self, job: Job) -> Batch:
        batch = Batch(job, self._queues[job])
        self._queues[job] = []
        return batch

    async def run(self, batch: Batch) -> BatchResult:
        """Carry out one batch (one Exec; a hash check also reads the source files).

        Raises:
            Unavailable / Unauthenticated: fatal to the run.
        """
        tools = self._tools
        actions = batch.actions
        if batch.job == "hash":
            lifecycle.note([a.rel for a in actions],
                           Step.HASH_AGENT if tools.known.agent else Step.RESUME_HASH)
            found = await resume.check_hashes(
                self._ctx, actions, tools.agent if tools.known.agent else None)
            if found.agent_lost:
                tools.lose_python()
            lifecycle.step([a.rel for a in found.same], Phase.HASH, Event.OK)
            lifecycle.step([a.rel for a in found.resend], Phase.HASH, Event.LOST)
            return BatchResult("hash", done=found.same, resend=found.resend)
        job: Literal["links", "meta"] = batch.job
        first = Phase.LINK if job == "links" else Phase.META
        failed: dict[int, str]
        precision: Precision | None
        agent = tools.agent
        if agent is not None and tools.known.agent:
            if job == "links":
                failed, events = await agentsteps.links(agent, actions, self._preserve)
                precision = None
            else:
                failed, events = await agentsteps.meta(agent, actions)
                precision = "ns"
        else:
            caps = (await tools.settled(self._ctx) if tools.python_may_serve(batch)
                    else await tools.shell(self._ctx))
            if not tools.known.python_usable:
                caps = replace(caps, python3=False)
            failed, precision, events = await _per_entry(self._ctx, job, caps, actions)
        # LINK/META -> LINK_SHELL/META_SHELL: what python3 did not vouch for, the shell's way.
        again = [i for i, event in enumerate(events)
                 if lifecycle.step(actions[i].rel, first, event) in (Phase.LINK_SHELL,
                                                                      Phase.META_SHELL)]
        if again:
            tools.lose_python()
            shell = replace(await tools.shell(self._ctx), python3=False)
            retried, shell_precision, shell_events = await _per_entry(
                self._ctx, job, shell, [actions[i] for i in again])
            second = Phase.LINK_SHELL if job == "links" else Phase.META_SHELL
            for i, event in zip(again, shell_events, strict=True):
                lifecycle.step(actions[i].rel, second, event)
            for k, i in enumerate(again):
                if k in retried:
                    failed[i] = retried[k]
                else:
                    failed.pop(i, None)
            if job == "meta" and (shell_precision == "s" or precision is None):
                precision = "s"
        what = "cannot recreate the symlink" if job == "links" else \
            "cannot apply permissions/mtime"
        result = BatchResult.split(job, actions, failed, what)
        result.precision = precision
        return result


async def _per_entry(ctx: Context, job: Literal["links", "meta"], caps: Capabilities,
                     actions: Sequence[Action],
                     ) -> tuple[dict[int, str], Precision | None, list[Event]]:
    """One links or meta step: ``({index: why not}, mtime precision, the entries' events)``."""
    if job == "links":
        failed, events = await recreate_links(ctx, caps, actions)
        return failed, None, events
    failed, precision, events = await apply_meta(ctx, caps, actions)
    return failed, precision, events


async def probe(ctx: Context, *, python: bool = True) -> Capabilities:
    """What the container offers (tar, touch, python3, sha256sum, stat...): one Exec with a
    short fixed command. A server without Exec, or a failed probe, offers nothing.
    ``python=False``: python3 is not asked (see :func:`probe_python`)."""
    command = _scripts.PROBE_COMMAND if python else _scripts.SHELL_PROBE_COMMAND
    try:
        res = await ctx.exec(command, timeout_seconds=30)
    except FATAL_ERRORS:
        raise
    except (MemohError, OSError):  # no Exec (UNIMPLEMENTED), or no shell
        return Capabilities()
    return _scripts.parse_probe(res.stdout)


async def probe_python(ctx: Context) -> tuple[bool, str]:
    """Whether python3 runs in the container, and how to run it (one Exec; a failure says
    no)."""
    try:
        res = await ctx.exec(_scripts.PY_PROBE_COMMAND, timeout_seconds=30)
    except FATAL_ERRORS:
        raise
    except (MemohError, OSError):
        return False, "python3"
    caps = _scripts.parse_probe(res.stdout)
    return caps.python3, caps.python_exe


async def recreate_links(ctx: Context, caps: Capabilities, batch: Sequence[Action],
                         ) -> tuple[dict[int, str], list[Event]]:
    """Recreate the symlinks of ``batch`` (never following anything): the failures and the
    entries' events (:func:`.lifecycle.events_of`)."""
    rels = [a.rel for a in batch]
    if USE_PYTHON_META and caps.python3 and len(batch) > SHELL_META_MAX:
        lifecycle.note(rels, Step.LINK_PYTHON)
        return await _exec_batch(ctx, len(batch),
                                 _scripts.with_python(_scripts.PY_LINKS, caps.python_exe),
                                 _scripts.py_link_records(batch), python=True)
    lifecycle.note(rels, Step.LINK_SHELL)
    return await _exec_batch(ctx, len(batch), _scripts.RUN_STDIN,
                             _scripts.links_script(batch).encode("utf-8", "surrogateescape"),
                             python=False)


async def apply_meta(ctx: Context, caps: Capabilities, batch: Sequence[Action],
                     ) -> tuple[dict[int, str], Precision, list[Event]]:
    """Apply permission bits and mtimes to ``batch``; returns the failures, the mtime
    precision used and the entries' events."""
    method = _scripts.meta_method(caps, len(batch), use_python=USE_PYTHON_META,
                                  shell_max=SHELL_META_MAX)
    precision = _scripts.method_precision(method)
    rels = [a.rel for a in batch]
    if method == "python":
        lifecycle.note(rels, Step.META_PYTHON)
        failed, events = await _exec_batch(
            ctx, len(batch), _scripts.with_python(_scripts.PY_META, caps.python_exe),
            _scripts.py_meta_records(batch), python=True)
    else:
        lifecycle.note(rels, Step.META_SHELL)
        script = _scripts.meta_script(batch, precision)
        failed, events = await _exec_batch(ctx, len(batch), _scripts.RUN_STDIN,
                                           script.encode("utf-8", "surrogateescape"),
                                           python=False)
    return failed, precision, events


#: Why a run into a container without Exec keeps its source (the operator's opt-out named).
NO_FLUSH = ("the container cannot be asked to flush (it has no Exec), so the copy may be only "
            "in its page cache: the source is kept; --rename-without-flush (library: "
            "rename_without_flush=True) renames without it")


async def flush(ctx: Context, agent: Agent | None = None) -> tuple[bool, str | None]:
    """Flush the destination's file system in the container before the source may be renamed
    (``sync -f DEST``: ``syncfs(2)`` of just that file system, a global ``sync`` where ``sync``
    knows no ``-f``; :func:`memoh_trio._scripts.flush.flush_command`).

    Returns ``(flushed, why not)``: ``why`` is ``None`` when the rename may follow. What the
    rename vouches for must be on the container's disk, not only in its page cache: one Exec
    for the whole tree, instead of an fsync per file on the server's hot path. A server
    without Exec (UNIMPLEMENTED) cannot be asked: the rename then waits for the operator's
    ``rename_without_flush`` (:data:`NO_FLUSH`).

    ``agent``: the container's agent flushes instead (``syncfs`` of the destination, or an
    ``fsync`` of everything it wrote); if it cannot, ``sync -f`` as without it.
    """
    if agent is not None:
        try:
            await agent.flush()
            return True, None
        except AgentError:
            pass  # the shell's way below
    try:
        res = await ctx.exec(flush_command(), timeout_seconds=EXEC_TIMEOUT)
    except FATAL_ERRORS:
        raise
    except Unimplemented:
        return False, None if ctx.opts.rename_without_flush else NO_FLUSH
    except (MemohError, OSError) as exc:
        return False, f"cannot flush the container's disk: {plain(exc)}"
    done = parse_flush(res.exit_code, res.stdout, res.stderr)
    if done.how is None:
        return False, f"cannot flush the container's disk: {done.error}"
    return True, None


def writeback_due(state: ProgressState, mark: int, synced: int) -> bool:
    """Whether an early ``sync`` is due (pure): :data:`WRITEBACK_BYTES` more were sent since
    the last one (``mark``), or the walk is over and every byte found was sent, more than the
    last one covered (``synced``): the data is then flushed while the last files are moved
    into place and get their modes and mtimes, and the final ``sync`` is left with little
    more than those (3,000 small files into Memoh's server: the final ``sync`` took 36-40 ms
    of a 0.32 s migration, after everything else)."""
    return state.bytes_done >= mark or (
        not state.scanning and state.bytes_done >= state.bytes_total
        and state.bytes_done > synced)


async def writeback(ctx: Context, tools: Tools) -> None:
    """Early ``sync`` as :func:`writeback_due` says (runs beside the copy; by the agent where
    it runs)."""
    mark, synced = WRITEBACK_BYTES, 0
    while True:
        state = await ctx.progress.value.wait_value(
            lambda s, m=mark, d=synced: writeback_due(s, m, d))
        synced = state.bytes_done
        try:
            if tools.agent is not None and tools.known.agent:
                await tools.agent.flush()
            else:
                await ctx.exec(flush_command(), timeout_seconds=EXEC_TIMEOUT)
        except (MemohError, OSError):
            return  # no Exec, or it failed: the final sync reports what matters
        mark = ctx.progress.state.bytes_done + WRITEBACK_BYTES


async def _exec_batch(ctx: Context, n: int, command: str, stdin: bytes, *, python: bool,
                      ) -> tuple[dict[int, str], list[Event]]:
    """Run one per-entry step: ``{index: reason}`` for every entry not vouched for (no ``O``
    record, or an ``O`` under a non-zero exit: not believed), and each entry's event."""
    try:
        res = await ctx.exec(command, timeout_seconds=EXEC_TIMEOUT, stdin=stdin)
    except FATAL_ERRORS:
        raise
    except (MemohError, OSError) as exc:
        return dict.fromkeys(range(n), plain(exc)), lifecycle.step_failed(n, python=python)
    records = _scripts.parse_records(res.stdout, n)
    events = lifecycle.events_of(records, res.exit_code, n, python=python)
    failed = _scripts.failures(res.stdout, n, res.stderr)
    if res.exit_code != 0:
        for i, why in failed.items():
            if why.startswith(_scripts.NO_RECORD):
                failed[i] = f"{why} (exit code {res.exit_code})"
        for i, event in enumerate(events):
            if i not in failed and event is not Event.OK:
                failed[i] = (f"the step exited with code {res.exit_code} after reporting it "
                             "done: not believed")
    return failed, events
