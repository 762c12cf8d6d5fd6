"""The operator contract, round 2 (issue 26, with items 7 and 8 of issue 23): when things go
sideways. Each case runs the real console script against real servers (memoh-trio's server as a
child process, a stuck or slowed connection, an HTTP/2 server that is not gRPC).
"""

# Test set-up and checks touch the local file system directly, on purpose.

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from peers import Peer, memoh_trio_server
from test_operator import (
    SCRIPT,
    cli,
    cli_env,
    make_tree,
)

from memoh_trio._paths import PART_PREFIX, SERVER_TEMP_PREFIX

UUIDS = ("3f9a6c1e-2b7d-4c7e-9f1a-0123456789ab", "7d1e0f2a-9c3b-4d5e-8f6a-fedcba987654")


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    root = tmp_path / "container"
    root.mkdir()
    async with memoh_trio_server(root) as peer:
        yield peer


def parts_in(root: Path) -> bool:
    """Whether an upload is on its way in ``root`` (its temporary file is there)."""
    return any(name.startswith((PART_PREFIX, SERVER_TEMP_PREFIX))
               for _d, _s, names in os.walk(root) for name in names)


async def _start(argv: list[str], nursery: trio.Nursery, **kwargs: Any) -> trio.Process:
    proc: trio.Process = await nursery.start(functools.partial(
        trio.run_process, [str(SCRIPT), *argv], stdout=-1, stderr=-1, env=cli_env(),
        check=False, **kwargs))
    return proc


# --------------------------------------------------------------------------- 2: HTTP/2, not gRPC


@contextlib.contextmanager
def http2_404_server() -> Iterator[str]:
    """An HTTP/2 server with no route (an ingress that answers every request ``:status
    404``), on a free port of 127.0.0.1; yields its address."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def handle(sock: socket.socket) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        with sock:
            try:
                sock.sendall(conn.data_to_send())
                while data := sock.recv(65536):
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived):
                            conn.send_headers(event.stream_id, [(":status", "404"),
                                                                ("content-length", "0")],
                                              end_stream=True)
                        elif isinstance(event, h2.events.DataReceived):
                            conn.acknowledge_received_data(event.flow_controlled_length,
                                                           event.stream_id)
                    sock.sendall(conn.data_to_send())
            except (OSError, h2.exceptions.ProtocolError):
                return

    def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(sock,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


@pytest.mark.parametrize("dry_run", [True, False])
async def test_an_http2_server_that_is_not_grpc(tmp_path: Path, dry_run: bool) -> None:
    src = make_tree(tmp_path / "bot", {"a": b"1", "d/b": b"2"})
    with http2_404_server() as target:
        code, out, err = await cli("migrate", str(src), "--target", target,
                                   *(["--dry-run"] * dry_run))
    assert code == 3, (out, err)
    assert f"{target} is not a gRPC server (HTTP/2 status 404)" in err, err
    assert src.is_dir()


# --------------------------------------------------------------------------- 9: --dest


@pytest.mark.parametrize(("dest", "message"), [
    ("../escape", "has a '..' component"),
    ("a/../../b", "has a '..' component"),
    ("/data/sub", "is an absolute path"),
])
async def test_dest_is_refused_not_rewritten(tmp_path: Path, server: Peer, dest: str,
                                             message: str) -> None:
    src = make_tree(tmp_path / "bot", {"a": b"1"})
    for extra in ([], ["--dry-run"]):
        code, out, err = await cli("migrate", str(src), "--target", server.target, "--dest",
                                   dest, *extra)
        assert code == 2, (extra, out, err)
        assert f"{dest!r} {message}" in err and "hint:" in err, err
    assert os.listdir(server.root) == [] and src.is_dir()


# --------------------------------------------------------------------------- 11: chunk size


@pytest.mark.parametrize("size", ["10", "16383", "8KiB"])
async def test_a_tiny_chunk_size_is_refused(tmp_path: Path, server: Peer, size: str) -> None:
    src = make_tree(tmp_path / "bot", {"a": b"1"})
    code, _out, err = await cli("migrate", str(src), "--target", server.target,
                                "--chunk-size", size)
    assert code == 2, err
    assert "too small" in err and "16KiB" in err, err
    assert os.listdir(server.root) == []
    code, _out, err = await cli("migrate", str(src), "--target", server.target,
                                "--chunk-size", "16KiB")
    assert code == 0, err


# --------------------------------------------------------------------------- 14: serve --no-auth


async def test_serve_without_auth_on_the_network_needs_the_risk_flag(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    code, out, err = await cli("serve", "--root", str(root), "--listen", "0.0.0.0:0",
                               "--no-auth", token=None)
    assert code == 2 and "--insecure-no-auth-on-network" in err, (out, err)
    code, out, _err = await cli("serve", "--help")
    assert "--insecure-no-auth-on-network" in out and "RISK" in " ".join(out.split())
    src = make_tree(tmp_path / "bot", {"a": b"hello"})
    async with memoh_trio_server(root, "--listen", "0.0.0.0:0", "--no-auth",
                                 "--insecure-no-auth-on-network", token=None) as peer:
        assert peer.target.startswith("0.0.0.0:")
        port = peer.target.rpartition(":")[2]
        code, _out, err = await cli("migrate", str(src), "--target", f"127.0.0.1:{port}",
                                    token=None)
    assert code == 0, err
    assert (root / "a").read_bytes() == b"hello"


# --------------------------------------------------------------------------- 17: smaller things


async def test_serve_listen_port_zero_error_quotes_what_was_typed(tmp_path: Path) -> None:
    code, _out, err = await cli("serve", "--root", str(tmp_path), "--listen", ":0")
    assert code == 2
    assert "malformed listen address ':0': the host is empty" in err, err
