"""What the steps of a run return, and errors in plain words: a leaf of :mod:`memoh_trio._migrate`
(the ledger records these; the steps build them; nothing here imports either)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .._errors import RPCError, Unimplemented
from .._plan import Action, describe_os_error
from .._scripts import Precision

#: What one batch does: recreate symlinks, check resume's hashes, or apply modes and mtimes.
Job = Literal["links", "hash", "meta"]


@dataclass
class BatchResult:
    """What became of a batch's entries (each entry in exactly one list).

    Attributes:
        job: the batch's job.
        done: symlinks recreated, files whose hashes agree, or modes and mtimes applied.
        failed: the entries that failed, with why.
        resend: ``hash`` only: files to send again (their hash differs or cannot be checked).
        precision: ``meta`` only: the precision the mtimes were applied with.
    """

    job: Job
    done: list[Action] = field(default_factory=list)
    failed: list[tuple[Action, str]] = field(default_factory=list)
    resend: list[Action] = field(default_factory=list)
    precision: Precision | None = None

    @classmethod
    def split(cls, job: Job, batch: Sequence[Action], failed: dict[int, str],
              what: str) -> BatchResult:
        """``batch`` divided by ``failed`` (``{index: reason}``); reasons prefixed by ``what``."""
        out = cls(job)
        for i, action in enumerate(batch):
            if i in failed:
                out.failed.append((action, f"{what}: {failed[i]}"))
            else:
                out.done.append(action)
        return out


@dataclass
class BatchOutcome:
    """What became of a batch's files (each file is in exactly one list)."""

    copied: list[Action] = field(default_factory=list)
    failed: list[tuple[Action, str]] = field(default_factory=list)
    #: read as something else than the walk saw (TAR -> STREAM: the per-file way decides)
    changed: list[Action] = field(default_factory=list)
    #: not vouched for by a record (TAR -> RESEND): sent again, the per-file way
    resend: list[Action] = field(default_factory=list)
    #: the python3 mover failed as a program (crashed, output cut, non-zero exit)
    python_lost: bool = False
    #: The ``copied`` files also got their modes and mtimes (to the nanosecond), proven by their
    #: records (python3 mover, :data:`memoh_trio._scripts.PY_MOVE`).
    meta_applied: bool = False


def plain(exc: BaseException) -> str:
    """An error in plain words for the report."""
    if isinstance(exc, RPCError):
        text = exc.message or exc.status.name.replace("_", " ").lower()
        if isinstance(exc, Unimplemented):
            return f"the server does not support this: {text}"
        return text
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    return str(exc) or type(exc).__name__
