"""An Exec call the server ends with an error status before its exit message raises that status
(its code and reason), not a bare "no exit status": grpc-go ends the call with INTERNAL when a
Send fails, which Memoh's server provokes by sending stdout and stderr from two goroutines at
once (seen as 1-4% of `printf out; printf err >&2` calls against a -race build)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

import memoh_trio
from memoh_trio import _errors
from memoh_trio._proto import mcpcontainer as pb

REASON = "transport: the stream is done or WriteHeader was already called"


def _exec(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    next(requests)
    yield bytes(pb.ExecOutput(stream=pb.ExecOutputStream.STDERR, data=b"err"))
    context.abort(grpc.StatusCode.INTERNAL, REASON)


@pytest.fixture
def failing_exec_server() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler: Any = grpc.method_handlers_generic_handler(
        "mcpcontainer.ContainerService",
        {"Exec": grpc.stream_stream_rpc_method_handler(_exec)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


async def test_exec_ended_by_a_server_error_raises_its_status(failing_exec_server: str) -> None:
    async with memoh_trio.connect(failing_exec_server) as client:
        with pytest.raises(_errors.Internal, match="the stream is done") as raised:
            await client.exec("printf out; printf err >&2")
        assert "without an exit status" not in str(raised.value)
        with pytest.raises(_errors.Internal, match="the stream is done"):  # with stdin too
            await client.exec("cat", stdin=b"x" * 100)
