"""One tar batch of small files through ``Exec`` (see :mod:`memoh_trio._tarbatch`).

:func:`send_batch` reads the files, unpacks them in a fresh staging directory in the container,
checks them against what it read (the python3 mover in the same Exec, or the client against the
container's listing), moves the verified files into place and returns what happened; it never
records anything itself. A file that changed while it was read,
and the files of a batch that failed as a whole in the container (tar failed, stdin dropped, the
staging directory vanished, ``mv`` failed), are handed back (``changed``) for the per-file path,
which proves or fails each one; conflicts the move script found (a symlink or a directory in the
way) fail.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

import trio

from .. import _scripts, _source
from .._errors import MemohError
from .._plan import Action
from .._tarbatch import TAR_PREFIX, Member, layout, pack
from . import lifecycle
from .context import EXEC_TIMEOUT, FATAL_ERRORS, Context
from .lifecycle import Event, Phase, Step
from .outcomes import BatchOutcome as BatchOutcome


class _BatchFailed(Exception):
    """A whole tar batch failed in the container (its files fail with this message)."""


async def send_batch(ctx: Context, batch: Sequence[Action], *,
                     py_move: Callable[[], Awaitable[str | None]] | None = None,
                     ) -> BatchOutcome:
    """Copy ``batch`` as one tar stream; see the module docstring.

    ``py_move``: answers (before the batch is packed) how to run python3 in the container
    (``None``: it has none): then, for more than :data:`memoh_trio._scripts.SHELL_META_MAX`
    files, the Exec that unpacks the batch also checks and moves it with one python3 process
    that applies their modes and mtimes too (``outcome.meta_applied``).

    Raises:
        Unavailable / Unauthenticated: fatal to the run (the staging directory is discarded).
    """
    out = BatchOutcome()
    members, out.changed = await trio.to_thread.run_sync(
        read_members, batch, ctx.opts.verify == "sha256", abandon_on_cancel=True)
    lifecycle.step([a.rel for a in out.changed], Phase.TAR, Event.CHANGED)
    if not members:
        return out
    settled: set[int] = set()  # member indexes copied or failed
    try:
        await _unpack_verify_move(ctx, members, out, settled, py_move)
    except FATAL_ERRORS:
        raise
    except (MemohError, OSError, _BatchFailed):
        # The batch failed as a whole in the container (tar failed, the archive or the script
        # did not arrive -- a server that drops stdin, a message over the peer's limit --, its
        # staging directory vanished): its files go the per-file way, which proves each one or
        # fails it with its own reason. Conflicts found by the scripts are not retried.
        for i, (action, _, _) in enumerate(members):
            if i not in settled:
                lifecycle.step(action.rel, Phase.TAR,
                               Event.PY_LOST if out.python_lost else Event.LOST)
                out.resend.append(action)
    return out


async def _unpack_verify_move(ctx: Context, members: list[tuple[Action, bytes, str | None]],
                              out: BatchOutcome, settled: set[int],
                              py_move: Callable[[], Awaitable[str | None]] | None) -> None:
    verify, preserve = ctx.opts.verify, ctx.opts.preserve
    actions = [a for a, _, _ in members]
    lay = layout([a.rel for a in actions])
    staging = TAR_PREFIX + secrets.token_hex(8)
    # What the container must find staged: the size read, or its SHA-256.
    expect: dict[int, int | str] = {
        i: len(data) if verify == "size" or digest is None else digest
        for i, (_, data, digest) in enumerate(members)}
    # With python3 (and more than a few files), the mover checks and moves the batch in the
    # Exec that unpacks it; else the container lists what it unpacked, the client checks the
    # listing, and a second Exec moves what passed.
    exe = (await py_move() if py_move is not None and len(members) > _scripts.SHELL_META_MAX
           else None)
    lifecycle.note([a.rel for a in actions],
                   Step.TAR_PYTHON if exe is not None else Step.TAR_SHELL)
    if exe is not None:
        run = _scripts.verify_move_script(staging, exe)
        extra = [(_scripts.MOVES_MEMBER,
                  _scripts.py_move_records(staging, lay, range(len(members)), actions,
                                           preserve=preserve, expect=expect))]
    else:
        run = _scripts.listing_script(lay, verify)
        extra = []
    payload = pack([Member(a.rel, data, a.mode, a.mtime_ns) for a, data, _ in members], lay,
                   preserve=preserve, extra=extra,
                   trailer=(_scripts.RUN_MEMBER, run.encode("utf-8", "surrogateescape")))
    placed = False
    unanswered = True  # an Exec of the batch is on its way: its script may yet run
    try:
        res = await ctx.exec(_scripts.extract_command(staging), timeout_seconds=EXEC_TIMEOUT,
                             stdin=payload)
        unanswered = False
        if res.exit_code != 0 and (exe is None or not res.stdout.strip()):
            unpacked = res.exit_code not in (_scripts.TAR_FAILED_EXIT, _scripts.NO_RUN_EXIT)
            out.python_lost = exe is not None and unpacked  # the mover died, silent
            why = res.stderr.decode("utf-8", "replace").strip() or f"exit {res.exit_code}"
            what = ("cannot unpack the batch in the container"
                    if res.exit_code in (_scripts.TAR_FAILED_EXIT, _scripts.NO_RUN_EXIT)
                    else "the container's shell failed")
            raise _BatchFailed(f"{what}: {why}")
        # counted sent; what fails or is sent again gives its bytes back (the ledger)
        ctx.ledger.sent_whole(actions)
        if exe is not None:
            out.meta_applied = preserve
            placed = res.exit_code == 0  # else the staging directory may be left
            records = _scripts.parse_records(res.stdout, len(members))
            out.python_lost = lifecycle.python_failed(records, res.exit_code)
            _settle(actions, range(len(members)), records, res.exit_code, out,
                    settled, python=True)
            return
        listing = _scripts.parse_listing(res.stdout, lay.staged, verify)
        good: list[int] = []
        for i, action in enumerate(actions):
            want = expect[i]
            got = listing.get(i)
            if got == want:
                good.append(i)
                continue
            settled.add(i)
            if got is None:  # not listed (staging vanished?): the per-file way decides
                lifecycle.step(action.rel, Phase.TAR, Event.LOST)
                out.resend.append(action)
                continue
            lifecycle.step(action.rel, Phase.TAR, Event.BAD)
            out.failed.append((action, f"{_scripts.CHECK_FAILED}: expected {want}, "
                                       f"found {got}"))
        script = _scripts.move_script(staging, lay, good)
        unanswered = True
        res = await ctx.exec(_scripts.RUN_STDIN, timeout_seconds=EXEC_TIMEOUT,
                             stdin=script.encode("utf-8", "surrogateescape"))
        unanswered = False
        placed = res.exit_code == 0  # else the staging directory may be left: discard it
        _settle(actions, good, _scripts.parse_records(res.stdout, len(members)),
                res.exit_code, out, settled, python=False)
    finally:
        if not placed:
            await ctx.discard(ctx.path(staging), recursive=True, settle=unanswered)


def _settle(actions: Sequence[Action], members: Iterable[int],
            records: Mapping[int, str | None], exit_code: int, out: BatchOutcome,
            settled: set[int], *, python: bool) -> None:
    """File each of ``members`` by its event (:func:`.lifecycle.events_of`: an ``O`` counts
    only under exit 0): copied, failed (a check or a conflict), or sent again (TAR -> RESEND:
    no record, ``mv`` failed, not found staged, an ``O`` the exit code does not back)."""
    members = list(members)
    events = lifecycle.events_of({k: records[i] for k, i in enumerate(members)}, exit_code,
                                 len(members), python=python)
    for i, event in zip(members, events, strict=True):
        action = actions[i]
        settled.add(i)
        if event is Event.OK and out.meta_applied:
            event = Event.OK_META  # the python3 mover gave it its mode and mtime too
        phase = lifecycle.step(action.rel, Phase.TAR, event)
        if phase in (Phase.MOVED, Phase.DONE):
            out.copied.append(action)
            continue
        why = records[i] or f"exit code {exit_code}"
        if phase is Phase.RESEND:
            out.resend.append(action)
        elif why.startswith(_scripts.CHECK_FAILED):
            out.failed.append((action, why))
        else:
            out.failed.append((action, f"cannot move the file into place: {why}"))


def read_members(batch: Sequence[Action], digest: bool = True,
                 ) -> tuple[list[tuple[Action, bytes, str | None]], list[Action]]:
    """Worker thread: read each file of a batch whole, with its SHA-256 (``digest``; else
    ``None``: size verification does not need it).

    Returns ``(members, changed)``: ``(action, data, sha256)`` for files read exactly as the walk
    saw them, and the actions of files that changed (or vanished) in between.
    """
    members: list[tuple[Action, bytes, str | None]] = []
    changed: list[Action] = []
    for action in batch:
        try:  # never follows a link, never waits on a FIFO; the same inode as the walk saw
            data = _source.read_whole(action)
        except (OSError, _source.SourceChanged):
            changed.append(action)  # the per-file path reports the error in its words
            continue
        members.append((action, data, hashlib.sha256(data).hexdigest() if digest else None))
    return members, changed
