"""The container agent (issue 25): one python3 process per migration, spoken to over one Exec.

* ``agent``: the program that runs in the container (standard library only), and the frame
  codec both sides use (:func:`encode_frame`, :class:`FrameDecoder`, :data:`PROTOCOL_VERSION`);
* ``driver``: the client's side of the protocol without I/O (:class:`Driver`, its states, the
  errors);
* ``session``: the agent over a :class:`memoh_trio.Client`'s Exec stream, in Trio
  (:func:`open_agent`).

Pure parts (``agent``'s codec, ``driver``, :func:`command`) are tested without sockets; the
agent's operations against real python3 processes and through Memoh's Go server.

How the migrator uses it (:mod:`memoh_trio._migrate.agentsteps`, the executor of the
lifecycle's python3 rows; :meth:`memoh_trio._migrate.meta.Tools.start`):

* one :func:`~.session.open_agent` per migration where the probe would run: its hello stands
  for the probe (``AgentUnavailable``, exit 127: no python3, the shell's rows of the table;
  ``AgentCrashed`` and the others: python3 is lost, likewise); an agent lost mid-run is
  ``PY_LOST`` for every entry it had not answered for, never counted done;
* small files: ``files`` batches with ``final`` (written, checked, with ``verify="sha256"``
  hashed back through the descriptor, given mode and times and renamed in one request);
* large files: ``WriteRaw`` keeps the bytes, to temporaries in the destination's *top*
  directory (no directory on their way a process could swap), then ``place`` checks each
  (size; sha256 through the descriptor it renames) and moves it into its directory through
  descriptors. A WriteRaw to a temporary beside its final name goes by path in Memoh's server
  and can be redirected;
* symlinks by ``symlink``, modes and times by ``meta`` (directories deepest first), empty
  directories by ``mkdir``, resume's hashes by ``hash``; one ``flush`` (``syncfs``) before the
  rename. A record is the only evidence an entry was done, a reply's ``ok`` alone is not.
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
