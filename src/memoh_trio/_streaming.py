"""The client's two streaming calls, WriteRaw and Exec, as flat procedures.

:class:`memoh_trio._client.Client` keeps their signatures and docstrings and passes its channel,
its call tracker and its defaults; the steps live here, one level deep: turn the source (or
stdin) into what the bridge streams, plus a pump task for an async iterable; watch for a stall;
run the call with those tasks beside it; map the outcome.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any, BinaryIO

import trio

from . import _errors
from ._bridge import client as bridge
from ._proto import mcpcontainer as pb
from ._results import ExecResult, WriteResult
from ._tasks import with_helpers

#: What a client passes to count a call in flight (and see its Unavailable errors).
Track = Callable[[], AbstractAsyncContextManager[None]]
Helper = Callable[[], Awaitable[None]]
Source = bytes | str | os.PathLike[str] | BinaryIO | AsyncIterable[bytes]


def piped(source: AsyncIterable[bytes]) -> tuple[bridge.Pipe[bytes], Helper]:
    """A pipe for the bridge, and the Trio task that fills it from ``source``."""
    pipe: bridge.Pipe[bytes] = bridge.Pipe()
    return pipe, partial(bridge.pump, source, pipe)


def source_spec(source: Source) -> tuple[bridge.SourceSpec, list[Helper]]:
    """What the bridge reads a WriteRaw source from, and the tasks that must run beside it.

    Raises:
        TypeError: ``source`` is none of the kinds :meth:`Client.write_raw` takes.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bridge.SourceSpec(data=memoryview(source).cast("B")), []
    if isinstance(source, (str, os.PathLike)):
        return bridge.SourceSpec(path=os.fspath(source)), []
    if hasattr(source, "read"):
        return bridge.SourceSpec(file=source), []  # type: ignore[arg-type]
    if isinstance(source, AsyncIterable):
        pipe, pump = piped(source)
        return bridge.SourceSpec(pipe=pipe), [pump]
    raise TypeError(f"cannot stream a {type(source).__name__}")


class Watchdog:
    """Cancels :attr:`scope` once no chunk was taken for ``seconds`` (``None``: never)."""

    def __init__(self, seconds: float | None,
                 on_progress: Callable[[int], None] | None) -> None:
        if seconds is not None and seconds <= 0:
            raise _errors.ConfigError(f"stall_timeout must be > 0, got {seconds}")
        self.seconds = seconds
        self.scope = trio.CancelScope()
        self.stalled = False
        self._on_progress = on_progress
        self._last = trio.current_time()

    def progress(self, nbytes: int) -> None:
        """A chunk was taken (HTTP/2 accepted it)."""
        self._last = trio.current_time()
        if self._on_progress is not None:
            self._on_progress(nbytes)

    async def watch(self) -> None:
        """Trio task: wake at the deadline; cancel the stream if nothing moved since."""
        assert self.seconds is not None
        while True:
            await trio.sleep_until(self._last + self.seconds)
            if trio.current_time() >= self._last + self.seconds:
                self.stalled = True
                self.scope.cancel()
                return


async def _send(channel: bridge.BridgeChannel, dog: Watchdog, path: str,
                spec: bridge.SourceSpec, **kwargs: Any) -> bridge.WriteOutcome | None:
    with dog.scope:
        return await channel.write_raw(path, spec, on_sent=dog.progress, **kwargs)
    return None  # the watchdog cancelled it


async def write_raw(
    channel: bridge.BridgeChannel,
    track: Track,
    path: str,
    source: Source,
    *,
    chunk_size: int,
    expected_size: int | None,
    hash_sha256: bool,
    on_progress: Callable[[int], None] | None,
    stall_timeout: float | None,
    rpc_timeout: float | None,
) -> WriteResult:
    """One WriteRaw stream; see :meth:`memoh_trio.Client.write_raw` (``chunk_size`` checked)."""
    if expected_size is not None and expected_size < 0:
        raise _errors.ConfigError(f"expected_size must be >= 0, got {expected_size}")
    spec, helpers = source_spec(source)
    dog = Watchdog(stall_timeout, on_progress)
    if stall_timeout is not None:
        helpers.append(dog.watch)
    send = partial(_send, channel, dog, path, spec, chunk_size=chunk_size,
                   expected_size=expected_size, hash_sha256=hash_sha256,
                   rpc_timeout=rpc_timeout)
    async with track():
        outcome = await with_helpers(send, helpers)
    if outcome is None:
        if dog.stalled:
            raise _errors.Stalled(f"WriteRaw of {path!r} to {channel.target} made no progress "
                                  f"for {stall_timeout:g} s")
        raise trio.TooSlowError  # pragma: no cover  (the scope is only cancelled by the dog)
    return WriteResult(outcome.bytes_written, outcome.bytes_read, outcome.sha256)


async def exec_command(
    channel: bridge.BridgeChannel,
    track: Track,
    first: pb.ExecInput,
    stdin: bytes | AsyncIterable[bytes],
    on_output: Callable[[str, bytes], None] | None,
    rpc_timeout: float | None,
) -> ExecResult:
    """One Exec call; see :meth:`memoh_trio.Client.exec`."""
    out: list[bytes] = []
    err: list[bytes] = []

    def collect(name: str, data: bytes) -> None:
        (err if name == "stderr" else out).append(data)
        if on_output is not None:
            on_output(name, data)

    helpers: list[Helper] = []
    feed: memoryview | bridge.Pipe[bytes] | None
    if isinstance(stdin, (bytes, bytearray, memoryview)):
        feed = memoryview(stdin).cast("B") if stdin else None
    else:
        feed, pump = piped(stdin)
        helpers.append(pump)
    run = partial(channel.exec, first, feed, collect, rpc_timeout=rpc_timeout)
    async with track():
        try:
            code = await with_helpers(run, helpers)
        except bridge.SourceFailure as exc:
            raise _errors.SourceReadError(
                f"cannot read the stdin of {first.command!r}: {exc.cause}") from exc.cause
    return ExecResult(code, b"".join(out), b"".join(err))
