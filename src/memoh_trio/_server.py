"""The memoh-trio server: ContainerService over a root directory, as a Trio task.

Usage::

    async with trio.open_nursery() as nursery:
        addr = await nursery.start(partial(memoh_trio.serve, root, token=TOKEN))  # free port
        ...                                                          # connect to str(addr)
        nursery.cancel_scope.cancel()                                # graceful stop

``serve`` binds the listening socket itself (``IPPROTO_TCP``, so grpclib enables TCP_NODELAY on
accepted connections), reports the bound :class:`ServerAddress` through ``task_status`` once it
accepts connections, and on cancellation discards in-flight uploads (no temporary file is left)
before returning. The gRPC machinery lives in :mod:`memoh_trio._bridge.server`; the file system
rules in :mod:`memoh_trio._fs` and :mod:`memoh_trio._paths`.

Authentication is explicit: ``serve`` refuses to start without a ``token`` unless the caller
passes ``allow_unauthenticated=True`` (for a server inside an isolated container, as Memoh runs
its own), and never listens on a non-loopback address with neither a token nor TLS
(:func:`check_exposure`, pure). ``allow_exec=False`` turns Exec off (UNIMPLEMENTED).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import NamedTuple

import trio

from ._budget import DEFAULT_BUDGET, MIN_BUDGET
from ._errors import ConfigError
from ._fs import ServerHooks
from ._tls import ServerTLS

__all__ = ["DEFAULT_BUDGET", "DEFAULT_MAX_FRAME_SIZE", "DEFAULT_WINDOW_SIZE", "ServerAddress",
           "ServerHooks", "check_exposure", "check_token", "serve"]

#: Largest gRPC message accepted (the contract: 16 MiB).
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: HTTP/2 connection receive window advertised by the server (measured: WriteRaw throughput over
#: loopback at 4/16 MiB windows, see the server helper's report). Stream windows are opened per
#: message as the memory budget allows (``_bridge/budget.py``).
DEFAULT_WINDOW_SIZE = 16 * 1024 * 1024
#: SETTINGS_MAX_FRAME_SIZE advertised by the server (h2's default is 16 KiB). Measured WriteRaw of
#: 64 MiB in 1 MiB chunks over loopback, best of 5, two interleaved rounds (noisy shared host):
#: 16 KiB 147/188 MiB/s, 256 KiB 175/192 MiB/s, 1 MiB 141/117 MiB/s.
DEFAULT_MAX_FRAME_SIZE = 256 * 1024
_MAX_FRAME_SIZE_LIMIT = 2**24 - 1  # RFC 9113 §6.5.2
_BACKLOG = 128


class ServerAddress(NamedTuple):
    """Where a server listens. ``str()`` gives ``host:port`` (``[v6]:port`` for IPv6)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


#: What a refusal to run without authentication suggests instead (library and CLI spellings).
AUTH_HINT = ("hint: give a token (token=..., or --token-file F / $MEMOH_TRIO_TOKEN / --token), "
             "or allow unauthenticated access explicitly (allow_unauthenticated=True, or "
             "--no-auth) for a server inside an isolated container")


def check_token(token: str | None, allow_unauthenticated: bool) -> None:
    """Refuse a server that would run without authentication by accident (pure).

    Raises:
        ConfigError: no token and no explicit ``allow_unauthenticated``; both at once; or a
            token that cannot travel in an ``authorization`` header (empty, whitespace or
            non-ASCII characters).
    """
    if token is None:
        if not allow_unauthenticated:
            raise ConfigError(
                "refusing to serve without authentication: any client that reaches the port "
                f"could run commands (Exec) as this user; {AUTH_HINT}")
        return
    if allow_unauthenticated:
        raise ConfigError("a token and allow_unauthenticated (--no-auth) contradict each other; "
                          "hint: drop one of them (is $MEMOH_TRIO_TOKEN set?)")
    if not token or not all("!" <= ch <= "~" for ch in token):
        raise ConfigError("the token must be non-empty printable ASCII without spaces; "
                          "hint: generate one with `openssl rand -hex 32`")


def is_loopback(sockaddr_host: str) -> bool:
    """Whether a numeric listen address is a loopback address (pure)."""
    try:
        return ipaddress.ip_address(sockaddr_host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, addresses: list[str], *, token: str | None, tls: bool,
                   insecure_no_auth_on_network: bool = False) -> None:
    """Refuse to listen beyond loopback with neither a token nor TLS, unless the caller said
    so explicitly (pure).

    Args:
        host: the listen address as given (for the message).
        addresses: the numeric addresses it resolved to.
        insecure_no_auth_on_network: the caller accepts that anyone who reaches the port runs
            commands (the server inside an isolated container, as Memoh runs its own).

    Raises:
        ConfigError: some address is not loopback and there is neither a token nor TLS.
    """
    if token is not None or tls or insecure_no_auth_on_network:
        return
    exposed = [a for a in addresses if not is_loopback(a)]
    if exposed:
        raise ConfigError(
            f"refusing to listen on {host!r} ({', '.join(exposed)}) without a token or TLS: "
            "anyone on the network could call the server and run commands; hint: listen on "
            "127.0.0.1, or give a token (--token-file F) or TLS (--tls-cert/--tls-key); inside "
            "an isolated container (as Memoh runs its server) add --insecure-no-auth-on-network")


async def _listen(host: str, port: int, *, token: str | None, tls: bool,
                  insecure_no_auth_on_network: bool) -> socket.socket:
    try:
        infos = await trio.socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ConfigError(f"cannot resolve listen address {host!r}: {exc}") from exc
    check_exposure(host, [str(info[4][0]) for info in infos], token=token, tls=tls,
                   insecure_no_auth_on_network=insecure_no_auth_on_network)
    last: OSError | None = None
    for family, _type, _proto, _name, sockaddr in infos:
        # IPPROTO_TCP explicitly: grpclib sets TCP_NODELAY only on such sockets.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        return sock
    raise ConfigError(f"cannot listen on {host}:{port}: {last}")


def _open_root(root: str | os.PathLike[str]) -> int:
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"server root {os.fspath(root)!r} does not exist") from None
    except NotADirectoryError:
        raise ConfigError(f"server root {os.fspath(root)!r} is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot open server root {os.fspath(root)!r}: {exc}") from exc


async def serve(
    root: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    token: str | None = None,
    allow_unauthenticated: bool = False,
    insecure_no_auth_on_network: bool = False,
    allow_exec: bool = True,
    tls: ServerTLS | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    hooks: ServerHooks | None = None,
    durable: bool = False,
    direct_io: bool = True,
    window_size: int = DEFAULT_WINDOW_SIZE,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    memory_budget: int = DEFAULT_BUDGET,
    task_status: trio.TaskStatus[ServerAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ContainerService for the directory ``root`` until cancelled.

    Args:
        root: the directory served; request paths ``x`` and ``/x`` both mean ``root/x`` and
            nothing outside it is ever touched.
        host, port: where to listen (port 0: a free port; see ``task_status``).
        token: every call must carry ``authorization: Bearer <token>``, otherwise it fails
            with UNAUTHENTICATED before any work is done. Required unless
            ``allow_unauthenticated`` is set.
        allow_unauthenticated: serve without a token, explicitly: any client that reaches the
            port may then run commands through Exec as this process's user. Meant for a server
            inside an isolated container (as Memoh runs its own). Still refused on a
            non-loopback address without TLS, unless ``insecure_no_auth_on_network``.
        insecure_no_auth_on_network: with ``allow_unauthenticated``, also listen without a
            token or TLS on a non-loopback address (the container's own interface, as Memoh
            runs its server: port 9090, no token, no TLS). Anyone who reaches the port then
            runs commands as this user: only inside an isolated container.
        allow_exec: ``False`` answers every Exec with UNIMPLEMENTED ("Exec is disabled"), as
            a server without Exec would; the migrator then streams every file and cannot
            apply modes and mtimes or ask for a ``sync``.
        tls: serve over TLS (mutual TLS when ``tls.client_ca`` is set).
        max_message_size: larger request messages fail with RESOURCE_EXHAUSTED.
        hooks: fault injection for tests (:class:`ServerHooks`).
        durable: ``fdatasync`` each uploaded file before renaming it into place, so a file the
            client was told is written survives a crash of the machine. Off by default, like
            Memoh's Go server: the migrator instead asks for one ``sync`` (Exec) before it
            renames its source, one flush for the whole tree instead of one per file.
        direct_io: write uploads that arrive in large chunks (256 KiB or more) with
            ``O_DIRECT``, past the page cache (falls back to the page cache where the
            filesystem refuses it). Less CPU per byte and nothing left for a ``sync`` to flush;
            ``False`` keeps every write in the page cache.
        window_size: HTTP/2 connection receive window advertised (a stream's window is opened
            for each message that has its share of ``memory_budget``, plus 64 KiB).
        max_frame_size: HTTP/2 SETTINGS_MAX_FRAME_SIZE advertised.
        memory_budget: bytes of request messages (and ReadRaw chunks) held at once across all
            calls and connections (default 64 MiB, :data:`DEFAULT_BUDGET`). A call whose
            message does not fit waits, reading nothing more, so HTTP/2 flow control holds its
            client back; a message larger than the budget waits for all of it. See
            :mod:`memoh_trio._budget`.
        task_status: receives the bound :class:`ServerAddress` once connections are accepted.

    Raises:
        ConfigError: root missing or not a directory, address not usable, bad settings; no
            token without ``allow_unauthenticated`` (see :func:`check_token`); a non-loopback
            address with neither token nor TLS (see :func:`check_exposure`).

    Cancellation: in-flight calls are cancelled, uploads discard their temporary files,
    connections are closed, then the cancellation propagates.
    """
    check_token(token, allow_unauthenticated)
    if insecure_no_auth_on_network and not allow_unauthenticated:
        raise ConfigError("insecure_no_auth_on_network (--insecure-no-auth-on-network) goes with "
                          "allow_unauthenticated (--no-auth); hint: add --no-auth, or drop it "
                          "and give a token")
    if not 0 < max_message_size < 2**31:
        raise ConfigError(f"max_message_size must be in 1..2**31-1, not {max_message_size}")
    if not 16384 <= max_frame_size <= _MAX_FRAME_SIZE_LIMIT:
        raise ConfigError(f"max_frame_size must be in 16384..{_MAX_FRAME_SIZE_LIMIT}")
    if not 65535 <= window_size < 2**31:
        raise ConfigError("window_size must be in 65535..2**31-1")
    if memory_budget < MIN_BUDGET:
        raise ConfigError(f"memory_budget must be at least {MIN_BUDGET} bytes (64 KiB), not "
                          f"{memory_budget}; hint: the default is {DEFAULT_BUDGET // 2**20} MiB")
    ssl_context = tls.context() if tls is not None else None
    root_fd = _open_root(root)
    try:
        sock = await _listen(host, port, token=token, tls=tls is not None,
                             insecure_no_auth_on_network=insecure_no_auth_on_network)
        try:
            bound = sock.getsockname()
            address = ServerAddress(str(bound[0]), int(bound[1]))
            # Imported here: only the bridge package imports asyncio/grpclib.
            from ._bridge.server import run_server

            await run_server(
                sock, root_fd, address, token=token, allow_exec=allow_exec,
                ssl_context=ssl_context,
                max_message_size=max_message_size, hooks=hooks, durable=durable,
                direct_io=direct_io, window_size=window_size, max_frame_size=max_frame_size,
                memory_budget=memory_budget, task_status=task_status,
            )
        finally:
            sock.close()
    finally:
        os.close(root_fd)
