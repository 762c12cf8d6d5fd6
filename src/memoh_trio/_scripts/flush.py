"""The flush of just the destination's file system, not the whole host (issue 25).

The migrator used to end with :data:`~memoh_trio._scripts.meta.SYNC_COMMAND`: ``sync``, a global
``sync(2)`` that writes out every file system's dirty pages; a fleet of 40 bots flushed the host
40 times. :func:`flush_command` asks for ``syncfs(2)`` of the destination instead (``sync -f DIR``:
busybox with ``FEATURE_SYNC_FANCY``, GNU coreutils >= 8.24), and falls back to a global ``sync``
only where ``sync`` does not know ``-f``; a ``sync -f`` that fails for any other reason (an I/O
error from ``syncfs``) fails the flush: ``sync(2)`` reports no errors, so falling back there would
hide one. The agent does the same with ``syncfs`` through libc (``flush`` in
:mod:`memoh_trio._agent.agent`).

Used by :func:`memoh_trio._migrate.meta.flush` (before the rename) and the early writebacks
(:func:`memoh_trio._migrate.meta.writeback`), in the destination directory. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .shell import shell_path

#: Printed by :func:`flush_command` with how it flushed.
FLUSHED = "memoh-flushed"

How = Literal["syncfs", "sync"]


def flush_command(dest: str = "") -> str:
    """A command that makes what was written under ``dest`` (relative to the server's working
    directory; "" = that directory) durable, printing ``memoh-flushed syncfs|sync``."""
    where = shell_path(dest) if dest else "."
    return (f"if _o=$(sync -f -- {where} 2>&1); then echo '{FLUSHED} syncfs'\n"
            "else case $_o in\n"
            f"  *option*|*sage*) sync && echo '{FLUSHED} sync' ;;\n"
            "  *) printf '%s\\n' \"$_o\" >&2; exit 1 ;;\n"
            "esac; fi")


@dataclass(frozen=True)
class Flushed:
    """What :func:`flush_command` did: ``how`` (None: it failed) and why it failed."""

    how: How | None
    error: str | None = None


def parse_flush(exit_code: int, stdout: bytes, stderr: bytes) -> Flushed:
    """The outcome of :func:`flush_command`: flushed only with exit 0 and its line."""
    lines = stdout.decode(errors="replace").split()
    if exit_code == 0 and len(lines) >= 2 and lines[-2] == FLUSHED \
            and lines[-1] in ("syncfs", "sync"):
        how: How = "syncfs" if lines[-1] == "syncfs" else "sync"
        return Flushed(how)
    why = stderr.decode(errors="replace").strip().splitlines()
    return Flushed(None, f"flush failed (exit {exit_code}): "
                         f"{why[-1] if why else 'no message'}")
