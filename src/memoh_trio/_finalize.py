"""The rename decision, as a pure function. No I/O here.

The source is renamed to ``<src>.migrated`` if and only if:

* the caller asked for the rename;
* the walk finished without error (a walk error hides a subtree we never saw);
* nothing was cancelled (deadline, Ctrl-C, a fatal error that cancelled the copy nursery);
* there was no fatal error and no per-entry failure;
* every entry that needed work (copy, create, mkdir, symlink) was done and verified.

:func:`decide` is called by :mod:`memoh_trio._migrate.run` after the copy nursery has exited, and
the ``os.rename`` follows it with no checkpoint in between, so nothing can change under it.
:func:`stopped_error` words the error a run raises when a fatal error stopped it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._errors import RPCError, Unavailable

#: The status of a run that reached its decision (see :class:`memoh_trio.MigrationReport`).
RunStatus = Literal["migrated", "dry-run", "incomplete"]


@dataclass(frozen=True)
class Outcome:
    """What happened during a copy, as counted by the migrator.

    Attributes:
        rename_requested: the caller wants the source renamed on success.
        dry_run: nothing was meant to be copied (walk and classify only).
        walk_complete: the walk reached its end (every directory was listed).
        cancelled: any cancellation reached the copy (deadline, interrupt, fatal error).
        fatal: a fatal error that stopped the copy (e.g. the connection was lost), or ``None``.
        required: entries that needed work (copy, create, mkdir, symlink, preserve).
        done: entries whose work finished and was verified (including resume's unchanged files).
        failures: entries that failed.
    """

    rename_requested: bool
    walk_complete: bool
    cancelled: bool
    fatal: str | None
    required: int
    done: int
    failures: int
    dry_run: bool = False


@dataclass(frozen=True)
class Decision:
    """Whether to rename, the report's status, and in plain words why (not)."""

    rename: bool
    reason: str
    status: RunStatus = "incomplete"


def decide(outcome: Outcome) -> Decision:
    """Decide whether the source may be renamed (see the module docstring)."""
    o = outcome
    if o.cancelled:
        return Decision(False, "the migration was cancelled before it finished")
    if o.fatal is not None:
        return Decision(False, f"the migration stopped: {o.fatal}")
    if not o.walk_complete:
        return Decision(False, "the source tree could not be walked to the end")
    if o.failures:
        n = o.failures
        return Decision(False, f"{n} {'entry' if n == 1 else 'entries'} failed")
    if o.done != o.required:
        return Decision(False, f"only {o.done} of {o.required} entries were confirmed")
    if o.dry_run:
        return Decision(False, "dry run: nothing was copied", "dry-run")
    if not o.rename_requested:
        return Decision(False, "rename not requested", "migrated")
    return Decision(True, "every entry was copied and verified", "migrated")


def stopped_error(exc: RPCError, why: str, *, files: int, failures: int,
                  source: str) -> RPCError:
    """The error a run raises after the fatal ``exc`` (``why``, in plain words) stopped it:
    same class and method; what was lost, and how far the copy got."""
    what = ("lost the connection to the container"
            if isinstance(exc, Unavailable) else "the container refused our credentials")
    message = (f"{what} ({why}); stopped: {files} files copied, {failures} failed, "
               f"source {source} kept (not renamed)")
    return type(exc)(message, method=exc.method)
