"""The container agent (issue 25): one python3 process per migration, spoken to over one Exec.

* ``agent``: the program that runs in the container (standard library only), and the frame
  codec both sides use (:func:`encode_frame`, :class:`FrameDecoder`, :data:`PROTOCOL_VERSION`);
* ``driver``: the client's side of the protocol without I/O (:class:`Driver`, its states, the
  errors);
* ``session``: the agent over a :class:`memoh_trio.Client`'s Exec stream, in Trio
  (:func:`open_agent`).

Pure parts (``agent``'s codec, ``driver``, :func:`command`) are tested without sockets; the
agent's operations against real python3 processes and through Memoh's Go server.

How the lifecycle (issue 24's table) can use it; none of this is wired yet:

* one :func:`~.session.open_agent` per bot where today's probe would run: its hello replaces the
  python3 probe (``AgentUnavailable``, exit 127: no python3, the shell rows of the table as
  today; ``AgentVersionMismatch``/``AgentCrashed``: a capability lost, the entries without a
  record go back to the table, never counted done);
* small files: ``files`` batches with ``final`` (written, checked, given mode and times and
  renamed in one request) instead of tar + the python3 mover + the metadata Exec;
* large files: WriteRaw keeps the bytes, to temporaries in the destination's *top* directory
  (no directory on their way a process could swap), then ``place`` moves each into its
  directory through descriptors; bytes by ``write`` over Exec's stdin where WriteRaw is not
  there. A WriteRaw to a temporary beside its final name goes by path in Memoh's server and can
  be redirected, so it cannot keep the guarantee;
* symlinks by ``symlink``, directories' modes and times by ``meta`` deepest first, leftovers by
  ``delete``; one ``flush`` (``syncfs``) where the final ``sync`` is; a record is the only
  evidence an entry was done, a reply's ``ok`` alone is not.
"""

from __future__ import annotations

import functools
import shlex
from pathlib import Path

from .agent import PROTOCOL_VERSION as PROTOCOL_VERSION


@functools.cache
def source() -> str:
    """The agent's program (``agent.py``) as shipped to the container."""
    return Path(__file__).with_name("agent.py").read_text()


def command(dest: str = "", *, python: str = "python3", source: str | None = None) -> str:
    """The Exec command that starts the agent over ``dest`` (relative to the server's working
    directory): ``exec python3 -S -c SOURCE DEST``, so the process Exec waits for is python3
    itself (one process in the container, no shell left behind)."""
    program = source if source is not None else globals()["source"]()
    return f"exec {shlex.quote(python)} -S -c {shlex.quote(program)} {shlex.quote(dest)}"
