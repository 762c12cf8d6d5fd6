"""Exec: run ``/bin/sh -c COMMAND`` for the server, in Trio (no asyncio here).

The command runs in its own session (process group) with ``work_dir`` (confined under ROOT like
any path, default ROOT) as current directory and the request's ``env`` appended to the server's
environment. Its stdin is fed from the request messages, stdout and stderr are handed to ``emit``
as soon as they are read, and when ``timeout_seconds`` (default 30) runs out -- or the call is
cancelled -- the whole process group is killed with SIGKILL. The exit code follows the shell
convention: ``128 + N`` for a process killed by signal N.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import trio

from . import _fs
from ._paths import InvalidPath

#: Default and upper bound of ``timeout_seconds``.
DEFAULT_TIMEOUT = 30
#: Bytes read from stdout/stderr at a time (one ExecOutput message at most this big).
OUTPUT_CHUNK = 64 * 1024

STDOUT = 0
STDERR = 1

Emit = Callable[[int, bytes], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class ExecRequest:
    command: str
    work_dir: str = ""
    env: Sequence[str] = ()
    timeout_seconds: int = 0


def exit_code(returncode: int) -> int:
    """Shell-style exit code: ``128 + N`` for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def build_env(extra: Sequence[str]) -> dict[str, str]:
    """The server's environment with ``KEY=VALUE`` entries appended (later ones win)."""
    env = dict(os.environ)
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key or "\x00" in item:
            raise InvalidPath(f"env entry {item!r} is not KEY=VALUE")
        env[key] = value
    return env


def _kill_group(proc: trio.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def run_exec(root_fd: int, request: ExecRequest, stdin: AsyncIterator[bytes],
                   emit: Emit) -> int:
    """Run the command; returns its exit code (see module doc).

    Args:
        root_fd: the server root directory fd (work_dir is resolved under it).
        request: the first ExecInput message.
        stdin: the ``stdin_data`` of the following messages, ending when the client half-closes.
        emit: ``await emit(STDOUT|STDERR, data)`` for each piece of output, in order per stream.

    Raises:
        InvalidPath / PathEscape / OSError: bad command, env or work_dir (nothing was run).
    """
    if not request.command:
        raise InvalidPath("command is required")
    env = build_env(request.env)
    timeout = request.timeout_seconds if request.timeout_seconds > 0 else DEFAULT_TIMEOUT
    dir_fd = _fs.open_dir(root_fd, request.work_dir)
    try:
        # The child chdirs through our fd (before close_fds applies): no path is re-resolved.
        proc = await trio.lowlevel.open_process(
            ["/bin/sh", "-c", request.command],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=f"/proc/self/fd/{dir_fd}", env=env, start_new_session=True,
        )
    finally:
        os.close(dir_fd)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin_pipe, stdout_pipe, stderr_pipe = proc.stdin, proc.stdout, proc.stderr

    async def feed() -> None:
        try:
            async for data in stdin:
                if data:
                    await stdin_pipe.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the command closed its stdin; later input is dropped
        finally:
            with trio.CancelScope(shield=True):
                await stdin_pipe.aclose()

    send_lock = trio.Lock()  # one message at a time on the gRPC stream

    async def pump(stream: trio.abc.ReceiveStream, kind: int) -> None:
        while data := await stream.receive_some(OUTPUT_CHUNK):
            async with send_lock:
                await emit(kind, bytes(data))

    deadline = trio.current_time() + timeout
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            with trio.move_on_at(deadline) as timer:
                async with trio.open_nursery() as pumps:
                    pumps.start_soon(pump, stdout_pipe, STDOUT)
                    pumps.start_soon(pump, stderr_pipe, STDERR)
                await proc.wait()
            if timer.cancelled_caught:
                _kill_group(proc)
                await proc.wait()
            nursery.cancel_scope.cancel()
    finally:
        if proc.returncode is None:
            _kill_group(proc)
            with trio.CancelScope(shield=True):
                await proc.wait()
        for pipe in (stdout_pipe, stderr_pipe):
            with trio.CancelScope(shield=True):
                await pipe.aclose()
    assert proc.returncode is not None
    return exit_code(proc.returncode)
