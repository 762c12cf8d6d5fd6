"""Shared test helpers: the in-process server of the tests and the leftover checks.

Beside ``peers.py`` (servers and migrators as child processes), this module is what test files
import instead of keeping their own copies:

* :func:`running` — ``memoh_trio.serve`` in-process on 127.0.0.1, yielding its address, for tests
  whose clients connect without a token: it serves unauthenticated *explicitly*
  (``allow_unauthenticated=True``) unless ``token=`` is given. Tests that want the token handled
  for them use :func:`memoh_trio.testing.running_server` (public, for embedders too).
* :data:`TEMP_PREFIXES`, :func:`temp_entries` — memoh-trio's temporary names at a destination
  (re-exported from :mod:`memoh_trio.testing`); :func:`tree_files` — regular files under a
  directory, for "identical at the destination" checks; :func:`wait_until` — poll a file-system
  condition with a deadline.
* :class:`PythonFirst` — a real client whose streams end only once the container answered the
  python3 question (streamed files are then parked and placed in batches), counting the
  per-file ``Stat`` and ``Rename`` calls.
"""

# Test set-up and checks touch the local file system directly, on purpose.

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from memoh_trio._server import ServerAddress
from memoh_trio.testing import TEMP_PREFIXES, running_server, temp_entries

__all__ = ["TEMP_PREFIXES", "running", "temp_entries", "tree_files", "wait_until"]


@asynccontextmanager
async def running(root: Path, **kwargs: Any) -> AsyncIterator[ServerAddress]:
    """``serve(root, **kwargs)`` in-process until the block ends; yields the address.

    Without ``token=`` the server is unauthenticated (``allow_unauthenticated=True``, the mode
    ``memoh-trio serve --no-auth`` gives): these tests' clients carry no token.
    """
    if kwargs.get("token") is None:
        kwargs.setdefault("allow_unauthenticated", True)
    async with running_server(root, **kwargs) as server:
        yield server.address


def tree_files(top: Path) -> dict[str, bytes]:
    """Relative path → content of every regular file under ``top`` (symlinks not followed)."""
    out: dict[str, bytes] = {}
    for dirpath, _dirs, names in os.walk(os.fsencode(top)):
        for name in names:
            p = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(p).st_mode):
                out[os.fsdecode(os.path.relpath(p, os.fsencode(top)))] = Path(
                    os.fsdecode(p)).read_bytes()
    return out


async def wait_until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    """Poll a file-system condition (nothing to wait on but time) until true or ``limit``."""
    with trio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


class PythonFirst:
    """A real client that records each Exec's command, holds every WriteRaw until the
    container answered the python3 question (so streamed files end once python3 is known, as
    on a mixed tree; the run needs the concurrency for all its streams and a tar batch then)
    and counts the per-file ``Stat`` and ``Rename`` calls. ``after(path)`` is called with the
    container's temporary file (under ``root``) once its stream is over; ``place(client,
    command, **kw)``, if given, runs the placement Exec (the mover on parked files) instead."""

    def __init__(self, client: Any, root: Path | None = None, *,
                 after: Callable[[Path], None] | None = None, place: Any = None) -> None:
        self._client = client
        self.root = root
        self.after, self.place = after, place
        self.commands: list[str] = []
        self.python_known = trio.Event()
        self.stats = self.renames = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def exec(self, command: str, **kwargs: Any) -> Any:
        self.commands.append(command)
        if self.place is not None and is_place(command):
            return await self.place(self._client, command, **kwargs)
        try:
            return await self._client.exec(command, **kwargs)
        finally:
            if "python3 ok" in command:  # the python3 question
                self.python_known.set()

    async def write_raw(self, path: str, *args: Any, **kwargs: Any) -> Any:
        await self.python_known.wait()
        result = await self._client.write_raw(path, *args, **kwargs)
        if self.after is not None and self.root is not None:
            self.after(self.root / path)
        return result

    async def stat(self, path: str) -> Any:
        self.stats += 1
        return await self._client.stat(path)

    async def rename(self, src: str, dst: str) -> Any:
        self.renames += 1
        return await self._client.rename(src, dst)


def is_place(command: str) -> bool:
    """The python3 mover run on parked files (a tar batch's mover travels in its archive)."""
    return "def whole(g,p,rs)" in command and "tar -x" not in command


async def signal_when(proc: trio.Process, ready: Any, settle: float,
                       signals: list[int]) -> tuple[str, str]:
    """Read the child's output; send ``signals`` ``settle`` seconds after ``ready()``, each
    after the child said it is stopping for the one before (sent back to back, the two would
    race inside the child: which one is "second" is then a matter of microseconds); return
    (stdout, stderr) once it exits."""
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()

    async def pump(stream: trio.abc.ReceiveStream, buf: bytearray) -> None:
        while chunk := await stream.receive_some(65536):
            buf += chunk

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, proc.stdout, out)
            nursery.start_soon(pump, proc.stderr, err)
            while not ready():  # noqa: ASYNC110
                await trio.sleep(0.05)
            await trio.sleep(settle)
            for n, signum in enumerate(signals):
                if n:
                    while b"stopping" not in err:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                proc.send_signal(signum)
            await proc.wait()
    return out.decode(), err.decode()
