"""The container agent (issue 25): one python3 process per migration, spoken to over one Exec.

* ``agent``: the program that runs in the container (standard library only), and the frame
  codec both sides use (:func:`encode_frame`, :class:`FrameDecoder`, :data:`PROTOCOL_VERSION`);
* ``driver``: the client's side of the protocol without I/O (:class:`Driver`, its states, the
  errors);
* ``session``: the agent over a :class:`memoh_trio.Client`'s Exec stream, in Trio
  (:func:`open_agent`).

Pure parts (``agent``'s codec, ``driver``, :func:`command`) are tested without sockets; the
agent's operations against real python3 processes and through Memoh's Go server.
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
