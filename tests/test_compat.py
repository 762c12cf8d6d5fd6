"""The private names of grpclib, h2, hyperframe and asyncio listed in ``_bridge/compat.py``: each
still exists, and behaves as the bridge assumes. Run this first when upgrading one of them."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import socket
import types
from pathlib import Path
from typing import Any

import grpclib.client
import grpclib.config
import grpclib.const
import grpclib.exceptions
import grpclib.protocol
import grpclib.server
import h2.connection
import h2.errors
import h2.events
import hyperframe.frame
import pytest
import trio
import trio_asyncio
from helpers import running

import memoh_trio
from benchmarks.grpcio_peer import start_grpcio_server
from memoh_trio._bridge import asyncio_loop, channel, compat, h2patch
from memoh_trio._bridge.codec import Codec
from memoh_trio._proto import mcpcontainer as pb

ALL_NAMES = compat.CLIENT_NAMES + compat.SERVER_NAMES + compat.H2_NAMES + compat.ASYNCIO_NAMES


def _resolve(dotted: str) -> object:
    """``package.module.Class`` or ``package.module`` → the object."""
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError:
        module, _, name = dotted.rpartition(".")
        return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize(("owner", "name", "why"), ALL_NAMES,
                         ids=[f"{o.rsplit('.', 1)[-1]}.{n}" for o, n, _ in ALL_NAMES])
def test_listed_name_exists(owner: str, name: str, why: str) -> None:
    obj = _resolve(owner)
    if hasattr(obj, name):
        return
    # An instance attribute: the class (or a base) assigns it.
    assert isinstance(obj, type), f"{owner}.{name} is gone ({why})"
    sources = [inspect.getsource(cls) for cls in obj.__mro__
               if cls.__module__.partition(".")[0] in ("grpclib", "h2", "hyperframe")]
    assert any(f"self.{name} =" in src or f"self.{name}:" in src for src in sources), (
        f"{owner} no longer sets {name} ({why})"
    )


# -- client: the channel and its protocol ---------------------------------------------------


async def test_channel_internals(tmp_path: Path) -> None:
    """Not connected before the first call; ``__connect__`` dials through our
    ``_protocol_factory``; ``_protocol`` is then our protocol over h2 (``Connection._connection``)
    with grpclib's StreamReset handler wrapped."""
    (tmp_path / "f").write_bytes(b"abc")
    server, port = start_grpcio_server(tmp_path)
    try:
        async with asyncio_loop():
            ch = await channel.BridgeChannel.open("127.0.0.1", port, dial=False)
            try:
                grpc_channel = ch._live_channel("test")
                assert not compat.is_connected(grpc_channel)
                assert compat.channel_protocol(grpc_channel) is None
                config, h2_config = compat.protocol_args(grpc_channel)
                assert isinstance(config, grpclib.config.Configuration)
                assert h2_config.client_side
                reply = await ch.unary("Stat", pb.StatRequest(path="f"), pb.StatResponse,
                                       rpc_timeout=10)
                assert reply.entry.size == 3
                assert compat.is_connected(grpc_channel)
                protocol = compat.channel_protocol(grpc_channel)
                assert type(protocol).__name__ == "_Protocol"
                assert type(compat.h2_connection(protocol)) is h2patch.H2Connection
                reset = compat.stream_processors(protocol)[h2.events.StreamReset]
                assert reset.__name__ == "on_stream_reset"
            finally:
                await ch.aclose()
    finally:
        server.stop(None)


async def test_grpclib_reads_the_status_only_after_our_end() -> None:
    """grpclib refuses to read the trailers of a client-streaming call whose client side was not
    ended; ``mark_sending_ended`` is what lets it (no network needed: the check comes first)."""
    async with asyncio_loop():
        ch = await channel.BridgeChannel.open("127.0.0.1", 9, dial=False)
        try:
            grpc_channel = ch._live_channel("test")

            async def check() -> None:
                stream = grpc_channel.request(
                    "/mcpcontainer.ContainerService/WriteRaw",
                    grpclib.const.Cardinality.STREAM_UNARY, pb.WriteRawChunk,
                    pb.WriteRawResponse,
                )
                assert not compat.sending_ended(stream)
                with pytest.raises(grpclib.exceptions.ProtocolError, match="not ended"):
                    await stream.recv_trailing_metadata()
                compat.mark_sending_ended(stream)
                assert compat.sending_ended(stream)
                with pytest.raises(grpclib.exceptions.ProtocolError, match="Initial metadata"):
                    await stream.recv_trailing_metadata()

            await trio_asyncio.aio_as_trio(check)()
        finally:
            await ch.aclose()


# -- server ---------------------------------------------------------------------------------


async def test_server_handler_is_registered_as_upstream_does() -> None:
    """``new_server_handler`` gives what grpclib's own ``_protocol_factory`` passes to its
    protocol, and registers the handler: closing the server closes it (cancels its calls)."""
    async with asyncio_loop():
        async def check() -> None:
            server = grpclib.server.Server([], codec=Codec(), status_details_codec=None)
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                sock.listen()
                await server.start(sock=sock)
                handler, config, h2_config = compat.new_server_handler(server)
                assert isinstance(handler, grpclib.server.Handler)
                assert isinstance(config, grpclib.config.Configuration)
                assert h2_config.client_side is False
                assert not handler.closing
                server.close()
                await server.wait_closed()
                assert handler.closing

        await trio_asyncio.aio_as_trio(check)()


async def test_server_reads_requests_by_hand(tmp_path: Path) -> None:
    """Through ``server_h2_stream`` the server reads a message's length prefix before its body
    (a message over the limit is refused by our own message) and ``decode_request`` decodes the
    body as the call's request type."""
    (tmp_path / "f").write_bytes(b"abc")
    async with running(tmp_path, max_message_size=64) as addr, memoh_trio.connect(addr) as c:
        assert (await c.stat("f")).size == 3
        with pytest.raises(memoh_trio.ResourceExhausted, match="exceeds the server limit of 64"):
            await c.write_file("g", b"x" * 1000)
    assert not (tmp_path / "g").exists()


async def test_socket_transport_read_size() -> None:
    """asyncio's socket transport reads at most ``max_size`` bytes (256 KiB) per readiness
    event; ``set_read_size`` changes it for one transport, and leaves a transport without it
    alone."""
    assert compat.set_read_size(asyncio.BaseTransport(), 1) is False
    a, b = socket.socketpair()
    with a, b:
        async with asyncio_loop():
            async def check() -> None:
                loop = asyncio.get_running_loop()
                got: list[bytes] = []
                done = loop.create_future()

                class Recorder(asyncio.Protocol):
                    def data_received(self, data: bytes) -> None:
                        got.append(data)
                        if sum(map(len, got)) >= 10 and not done.done():
                            done.set_result(None)

                transport, _ = await loop.connect_accepted_socket(Recorder, a)
                try:
                    assert type(transport).max_size == 256 * 1024  # type: ignore[attr-defined]
                    assert compat.set_read_size(transport, 3) is True
                    b.sendall(b"0123456789")
                    await asyncio.wait_for(done, 10)
                    assert b"".join(got) == b"0123456789"
                    assert max(map(len, got)) <= 3
                finally:
                    transport.close()

            await trio_asyncio.aio_as_trio(check)()


# -- client: RST_STREAM(NO_ERROR) after a complete answer -------------------------------------


class _FakeStream:
    """What grpclib's EventsProcessor and our reset handler touch of a protocol Stream."""

    def __init__(self, trailers: list[tuple[str, str]] | None) -> None:
        self.trailers = trailers
        self.terminated: list[str] = []
        self.window_updated = trio.Event()  # only .set() is called, synchronously

    def __terminated__(self, reason: str) -> None:
        self.terminated.append(reason)


def _processor(stream: _FakeStream) -> grpclib.protocol.EventsProcessor:
    handler = grpclib.client.Handler()
    connection = types.SimpleNamespace(streams_failed=0)
    processor = grpclib.protocol.EventsProcessor(handler, connection)  # type: ignore[arg-type]
    processor.streams[1] = stream  # type: ignore[assignment]
    return processor


def _reset(code: h2.errors.ErrorCodes, *, remote: bool = True) -> h2.events.StreamReset:
    return h2.events.StreamReset(stream_id=1, error_code=code, remote_reset=remote)


def test_grpclib_terminates_a_stream_on_any_reset() -> None:
    """The upstream behaviour the bridge works around: even a NO_ERROR reset after the
    trailers ends the call with StreamTerminatedError."""
    stream = _FakeStream(trailers=[("grpc-status", "0")])
    processor = _processor(stream)
    handle: Any = processor.processors[h2.events.StreamReset]
    assert handle == processor.process_stream_reset
    handle(_reset(h2.errors.ErrorCodes.NO_ERROR))
    assert stream.terminated == ["Stream reset by remote party, error_code: 0"]


@pytest.mark.parametrize(
    ("trailers", "code", "remote", "kept"),
    [
        ([("grpc-status", "0")], h2.errors.ErrorCodes.NO_ERROR, True, True),
        (None, h2.errors.ErrorCodes.NO_ERROR, True, False),  # no answer yet
        ([("grpc-status", "0")], h2.errors.ErrorCodes.CANCEL, True, False),
        ([("grpc-status", "0")], h2.errors.ErrorCodes.NO_ERROR, False, False),  # ours
    ],
)
def test_answered_then_reset(trailers: list[tuple[str, str]] | None,
                             code: h2.errors.ErrorCodes, remote: bool, kept: bool) -> None:
    stream = _FakeStream(trailers)
    protocol = types.SimpleNamespace(processor=_processor(stream))
    event = _reset(code, remote=remote)
    assert channel.answered_then_reset(protocol, event) is kept  # type: ignore[arg-type]
    assert stream.window_updated.is_set() is kept  # a sender waiting for window wakes up


# -- h2 / hyperframe (h2patch) ---------------------------------------------------------------


def test_h2_internals() -> None:
    conn = h2.connection.H2Connection()
    assert isinstance(conn._data_to_send, bytearray)
    assert callable(conn._prepare_for_sending)
    assert hyperframe.frame._STRUCT_HBBBL.format == h2patch._HEADER.format
    frame = hyperframe.frame.DataFrame(1, data=b"x")
    assert frame.serialize_padding_data() == b""


# --- betterproto2's _version without importlib.metadata (_bridge/bp2version.py) ---------------

_BP2_PROBE = """
import sys
from memoh_trio._cli.main import _console_imports
_console_imports("migrate")
_console_imports("serve")
import betterproto2
module = sys.modules["betterproto2._version"]
print(betterproto2.__version__)
print("importlib.metadata" in sys.modules)
print(module.check_compiler_version.__code__.co_filename)
"""


def test_betterproto2_version_is_read_without_importlib_metadata() -> None:
    """The console script's start (the client and the server stacks) imports no
    ``importlib.metadata`` (its 7-10 ms were all for betterproto2's version), and betterproto2
    reports the version the installed distribution declares, with its own compiler check."""
    import importlib.metadata
    import subprocess
    import sys

    import betterproto2

    done = subprocess.run([sys.executable, "-c", _BP2_PROBE], capture_output=True, text=True,
                          check=True, timeout=60)
    version, metadata_loaded, check_file = done.stdout.split("\n")[:3]
    assert version == importlib.metadata.version("betterproto2")
    assert metadata_loaded == "False"
    upstream = Path(betterproto2.__file__).parent / "_version.py"
    assert Path(check_file) == upstream


_EMBED_PROBE = """
import sys
import memoh_trio._client, memoh_trio._migrate, memoh_trio._server
import betterproto2
module = sys.modules["betterproto2._version"]
import builtins
b = module.__dict__["__builtins__"]
b = b if isinstance(b, dict) else vars(b)
print(module.__spec__ is not None, b["__import__"] is builtins.__import__)
print(module.metadata is sys.modules["importlib.metadata"])
"""


def test_an_embedding_process_imports_betterproto2_unpatched() -> None:
    """A process that embeds the library (imports the client, the migrator and the server,
    not the console script) gets betterproto2's ``_version`` imported the normal way: no
    patched ``__import__`` of ours runs in it (5306aab installed it when the bridge was
    imported, in every process)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _EMBED_PROBE], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.split() == ["True", "True", "True"], done.stdout


def test_betterproto2_version_file_is_as_assumed() -> None:
    """Upstream's ``_version.py`` still takes its version from ``importlib.metadata`` (what
    bp2version answers) and nothing else; its compiler check still compares major.minor."""
    import betterproto2

    from memoh_trio._bridge import bp2version

    source = (Path(betterproto2.__file__).parent / "_version.py").read_text()
    assert "from importlib import metadata\n" in source
    assert 'metadata.version("betterproto2")' in source
    assert sum(line.startswith(("import ", "from ")) for line in source.splitlines()) == 1
    site = Path(betterproto2.__file__).parent.parent
    version = bp2version.dist_version(site)
    assert version == betterproto2.__version__
    major_minor = ".".join(version.split(".")[:2])
    betterproto2.check_compiler_version(major_minor + ".99")
    with pytest.raises(ImportError):
        betterproto2.check_compiler_version("0.0.1")


def test_bp2version_dist_version(tmp_path: Path) -> None:
    from memoh_trio._bridge import bp2version

    assert bp2version.dist_version(tmp_path) is None  # no dist-info
    info = tmp_path / "betterproto2-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.4\nName: betterproto2\nVersion: 1.2.3\n"
                                   "\nVersion: 9.9.9 (the body, not a header)\n")
    assert bp2version.dist_version(tmp_path) == "1.2.3"
    (info / "METADATA").write_text("Metadata-Version: 2.4\n\nVersion: 9.9.9\n")
    assert bp2version.dist_version(tmp_path) is None  # no Version header
    (tmp_path / "betterproto2-1.2.4.dist-info").mkdir()
    assert bp2version.dist_version(tmp_path) is None  # two: which one is installed is unclear


def test_bp2version_leaves_an_imported_betterproto2_alone() -> None:
    import betterproto2  # noqa: F401  (imported: nothing to save)

    from memoh_trio._bridge import bp2version

    assert bp2version.install() is False
