"""The Trio client of ContainerService.

``async with connect("host:port") as client:`` gives a :class:`Client` with one typed method per
RPC. Everything here is plain Trio; grpclib runs behind :mod:`memoh_trio._bridge.client`, crossed
once per RPC. Errors are :mod:`memoh_trio._errors` classes (``NotFound``, ``Unavailable``, ...).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from . import _errors, _streaming, _wire
from ._bridge import asyncio_loop
from ._bridge import client as bridge
from ._defaults import MAX_CHUNK_SIZE as MAX_CHUNK_SIZE
from ._dirindex import DirIndex
from ._proto import mcpcontainer as pb
from ._results import ExecResult as ExecResult
from ._results import FileEntry as FileEntry
from ._results import ReadFileResult as ReadFileResult
from ._results import WriteResult as WriteResult
from ._tls import ClientTLS
from ._units import parse_target

if TYPE_CHECKING:
    from ._server import ServerAddress

T = TypeVar("T")

# Size of the WriteRaw chunks (one gRPC message each). Measured against the grpcio server with a
# 256 MiB stream (benchmarks/bench_chunk_size.py): 64 KiB is clearly slower (per-message overhead),
# from 256 KiB up throughput is flat within noise; 1 MiB keeps the memory in flight small and is
# far below the 4 MiB default message limit of grpcio and grpc-go servers. Into Memoh's Go server
# (grpc-go 1.33, 16 KiB frames; 2 x 128 MiB, benchmarks/ab_clients.py, medians of 5-9 runs):
# 768 KiB to 1.75 MiB alike (0.33-0.35 s, server CPU 0.29-0.32 s), 64-256 KiB cost our client
# 15-45% more CPU, and 2 MiB messages double the Go server's CPU (0.61 s; 0.52 s instead of 0.35).
DEFAULT_CHUNK_SIZE = 1024 * 1024


def _entry(e: pb.FileEntry | None) -> FileEntry:
    if e is None:
        raise _errors.Internal("server sent no entry")
    return FileEntry(e.path, bool(e.is_dir), int(e.size), e.mode, e.mod_time)


class Client:
    """A connection to one ContainerService. Get one from :func:`connect` (or a Pool).

    Attributes:
        target: ``"host:port"`` of the server.
        answered: the server has answered a call on this connection (a result, or a gRPC
            status it sent): it speaks gRPC, whatever happens to the connection later.
    """

    target: str
    answered: bool

    def __init__(
        self, channel: bridge.BridgeChannel, *, timeout: float | None, chunk_size: int
    ) -> None:
        self.target = channel.target
        self._channel = channel
        self._timeout = timeout
        self._chunk_size = _check_chunk_size(chunk_size)
        self._active = 0
        self._retired = False
        self._on_unavailable: Callable[[Client], None] | None = None
        self.answered = False

    @classmethod
    async def _open(
        cls,
        target: str,
        *,
        tls: ClientTLS | None = None,
        token: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  (per-call gRPC deadline)
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        connect_timeout: float = 10.0,
        dial: bool = True,
    ) -> Client:
        """Open inside a running :func:`asyncio_loop`; the caller must :meth:`aclose`."""
        host, port = parse_target(target)
        _check_chunk_size(chunk_size)
        ssl_context = tls.context() if tls is not None else None
        channel = await bridge.BridgeChannel.open(
            host, port, ssl_context=ssl_context,
            server_hostname=tls.server_hostname if tls is not None else None,
            token=token, connect_timeout=connect_timeout, dial=dial,
        )
        return cls(channel, timeout=timeout, chunk_size=chunk_size)

    async def aclose(self) -> None:
        """Close the connection; calls still running fail with Unavailable."""
        await self._channel.aclose()

    @property
    def closed(self) -> bool:
        """Whether the connection was closed."""
        return self._channel.closed

    def _retire(self) -> bool:
        """Close as soon as no call runs any more. True if it can be closed right now."""
        self._retired = True
        return self._active == 0

    @contextlib.asynccontextmanager
    async def _track(self) -> AsyncIterator[None]:
        self._active += 1
        try:
            yield
        except _errors.Unavailable:
            if self._on_unavailable is not None:
                self._on_unavailable(self)
            raise
        except _errors.RPCError as exc:  # a status from the server (a deadline is ours)
            self.answered = self.answered or not isinstance(exc, _errors.DeadlineExceeded)
            raise
        else:
            self.answered = True
        finally:
            self._active -= 1
            if self._retired and self._active == 0:
                await self._channel.aclose()

    async def _unary(self, method: str, request: Any, reply_type: type[T]) -> T:
        async with self._track():
            return await self._channel.unary(
                method, request, reply_type, rpc_timeout=self._timeout
            )

    # -- unary RPCs --------------------------------------------------------------------------

    async def read_file(
        self, path: str, *, line_offset: int = 0, n_lines: int = 0
    ) -> ReadFileResult:
        """Numbered lines of a text file (``binary=True`` and no content for binary files)."""
        rep = await self._unary(
            "ReadFile",
            pb.ReadFileRequest(path=path, line_offset=line_offset, n_lines=n_lines),
            pb.ReadFileResponse,
        )
        return ReadFileResult(rep.content, int(rep.total_lines), bool(rep.binary))

    async def write_file(self, path: str, content: bytes) -> None:
        """Write a whole (small) file in one message; parents are created."""
        await self._unary(
            "WriteFile", pb.WriteFileRequest(path=path, content=bytes(content)),
            pb.WriteFileResponse,
        )

    async def list_dir(self, path: str = "", *, recursive: bool = False) -> list[FileEntry]:
        """The entries of the directory ``path`` ("" is the root); all below it with
        ``recursive``."""
        # Parsed by hand (a large destination's reply: 100,000 entries took betterproto2
        # 1.3 s, _wire 0.34 s); the generated ListDirResponse is the reference in the tests.
        rep = await self._unary(
            "ListDir", pb.ListDirRequest(path=path, recursive=recursive), _wire.ListDirEntries
        )
        return [FileEntry(*e) for e in rep.entries]

    async def list_dir_index(self, path: str = "", *, recursive: bool = True) -> DirIndex:
        """:meth:`list_dir` kept compact for a large tree, decoded straight from the reply:
        about 107 bytes a file plus its name's length, against ~350 bytes a file as
        :class:`FileEntry` objects (see :class:`memoh_trio._dirindex.DirIndex`)."""
        rep = await self._unary(
            "ListDir", pb.ListDirRequest(path=path, recursive=recursive), _wire.ListDirIndex
        )
        return rep.index

    async def stat(self, path: str) -> FileEntry:
        """Raises NotFound if ``path`` does not exist."""
        rep = await self._unary("Stat", pb.StatRequest(path=path), pb.StatResponse)
        return _entry(rep.entry)

    async def mkdir(self, path: str) -> None:
        """Create the directory ``path`` and its missing parents (no error if it exists)."""
        await self._unary("Mkdir", pb.MkdirRequest(path=path), pb.MkdirResponse)

    async def rename(self, old_path: str, new_path: str) -> None:
        """Move ``old_path`` to ``new_path``, replacing a file there."""
        await self._unary(
            "Rename", pb.RenameRequest(old_path=old_path, new_path=new_path), pb.RenameResponse
        )

    async def delete_file(self, path: str, *, recursive: bool = False) -> None:
        """Delete the file or empty directory ``path``; a whole tree with ``recursive``."""
        await self._unary(
            "DeleteFile", pb.DeleteFileRequest(path=path, recursive=recursive),
            pb.DeleteFileResponse,
        )

    # -- WriteRaw ----------------------------------------------------------------------------

    async def write_raw(
        self,
        path: str,
        source: bytes | str | os.PathLike[str] | BinaryIO | AsyncIterable[bytes],
        *,
        chunk_size: int | None = None,
        expected_size: int | None = None,
        hash_sha256: bool = False,
        on_progress: Callable[[int], None] | None = None,
        stall_timeout: float | None = None,
    ) -> WriteResult:
        """Stream ``source`` into ``path`` on the server with client-streaming WriteRaw.

        Args:
            path: destination, relative to the server's root.
            source: bytes; a host path (``str`` or path-like); a binary file object; or an async
                iterable of bytes. Files are read in chunks in a worker thread, one chunk ahead.
            chunk_size: bytes per message (default: the client's, DEFAULT_CHUNK_SIZE).
            expected_size: the source must have exactly this many bytes.
            hash_sha256: also compute the SHA-256 of what was sent.
            on_progress: called with the byte count of each chunk once HTTP/2 took it.
            stall_timeout: give up when no chunk was taken for this many seconds.

        Memory in flight is bounded by the HTTP/2 window plus about two chunks, whatever the size
        of the source: a chunk is only read once the previous one was handed to HTTP/2, and that
        waits for the server's flow-control window.

        Raises:
            SourceReadError: the source failed; ``abort=true`` was sent (nothing written, given a
                server honouring abort).
            SourceChanged: ``expected_size`` given and the source had fewer or more bytes; aborted.
            Stalled: no progress for ``stall_timeout`` seconds; the stream was cancelled.
            RPCError: the server refused (NotFound, PermissionDenied, ...); Unavailable when the
                connection failed.
        """
        size = _check_chunk_size(chunk_size if chunk_size is not None else self._chunk_size)
        return await _streaming.write_raw(
            self._channel, self._track, path, source, chunk_size=size,
            expected_size=expected_size, hash_sha256=hash_sha256, on_progress=on_progress,
            stall_timeout=stall_timeout, rpc_timeout=self._timeout,
        )

    # -- ReadRaw -----------------------------------------------------------------------------

    def read_raw(self, path: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Stream a file from the server::

            async with client.read_raw("data/big.bin") as chunks:
                async for data in chunks:
                    ...

        Raises NotFound (from the iteration) if the file does not exist.
        """
        return self._read_raw(path)

    @asynccontextmanager
    async def _read_raw(self, path: str) -> AsyncIterator[AsyncIterator[bytes]]:
        async with self._track(), self._channel.read_raw(path, rpc_timeout=self._timeout) as pipe:

            async def chunks() -> AsyncGenerator[bytes, None]:
                while True:
                    data = await pipe.get()
                    if data is None:
                        return
                    yield data

            iterator = chunks()
            try:
                yield iterator
            finally:
                await iterator.aclose()

    # -- Exec --------------------------------------------------------------------------------

    async def exec(
        self,
        command: str,
        *,
        work_dir: str = "",
        env: Sequence[str] = (),
        timeout_seconds: int = 0,
        stdin: bytes | AsyncIterable[bytes] = b"",
        on_output: Callable[[str, bytes], None] | None = None,
    ) -> ExecResult:
        """Run ``/bin/sh -c command`` on the server.

        The first message carries the command alone (Memoh's server drops stdin from it);
        ``stdin`` (bytes, or an async iterable of bytes streamed as it comes) follows in
        messages of at most 1 MiB. A command may exit without reading all of its stdin: its
        exit code and output are the result, the rest of stdin is dropped.
        ``on_output("stdout"|"stderr", data)`` is called as output arrives; all of it is also
        collected in the result.

        Raises:
            SourceReadError: the async iterable failed; the call was cancelled.
            InvalidArgument: the command does not fit in one 4 MiB message.
        """
        first = pb.ExecInput(
            command=command, work_dir=work_dir, env=list(env), timeout_seconds=timeout_seconds
        )
        return await _streaming.exec_command(
            self._channel, self._track, first, stdin, on_output, self._timeout
        )


# -- for the Pool (same module as Client, so Client's internals stay private to it) ---------


async def open_client(target: str, **connect_kwargs: Any) -> Client:
    """A client for ``target`` inside a running :func:`asyncio_loop`; the caller closes it."""
    return await Client._open(target, **connect_kwargs)


def retire(client: Client) -> None:
    """Close ``client`` now if no call runs on it, else when its last call ends."""
    if client._retire():
        client._channel.close_nowait()


def on_unavailable(client: Client, hook: Callable[[Client], None]) -> None:
    """Call ``hook(client)`` when a call on ``client`` fails with Unavailable."""
    client._on_unavailable = hook


def _check_chunk_size(size: int) -> int:
    if not 0 < size <= MAX_CHUNK_SIZE:
        raise _errors.ConfigError(
            f"chunk size must be between 1 and {MAX_CHUNK_SIZE} bytes, got {size}"
        )
    return size


@asynccontextmanager
async def connect(
    target: str | ServerAddress,
    *,
    tls: ClientTLS | None = None,
    token: str | None = None,
    timeout: float | None = None,  # noqa: ASYNC109  (the per-call gRPC deadline, by contract)
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    connect_timeout: float = 10.0,
) -> AsyncIterator[Client]:
    """Connect to the ContainerService at ``target``.

    Args:
        target: ``"host:port"`` (``"[v6]:port"``), or the :class:`memoh_trio.ServerAddress`
            that ``await nursery.start(memoh_trio.serve, ...)`` returns.
        tls: TLS (and mTLS) settings; None for plaintext HTTP/2.
        token: sent as ``authorization: Bearer TOKEN`` with every call.
        timeout: deadline of each call in seconds (None: no deadline).
        chunk_size: default WriteRaw chunk size.
        connect_timeout: how long dialling may take.

    Raises:
        Unavailable: the server cannot be reached ("cannot connect to HOST:PORT: ...").
        ConfigError: bad target or TLS files.

    The connection is closed when the block exits, also on cancellation.
    """
    target = str(target)
    parse_target(target)
    error: Exception | None = None
    # The loop's nursery would wrap exceptions in ExceptionGroups: carry them out unwrapped.
    async with asyncio_loop():
        try:
            client = await Client._open(
                target, tls=tls, token=token, timeout=timeout, chunk_size=chunk_size,
                connect_timeout=connect_timeout,
            )
        except Exception as exc:
            error = exc
        else:
            try:
                yield client
            except Exception as exc:
                error = exc
            finally:
                await client.aclose()
    if error is not None:
        raise error


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "Client",
    "ExecResult",
    "FileEntry",
    "ReadFileResult",
    "WriteResult",
    "connect",
    "parse_target",
]
