"""Why a target could not be used: a second look after a connection failed (CLI hints).

When a migration ends with :class:`~memoh_trio._errors.Unavailable`, the transport's error
("connection closed by the peer", "HTTP/2 protocol error", "TLS error: wrong version number")
rarely says what is wrong. :func:`diagnose` opens one plain TCP connection, sends the HTTP/2
client preface and reads what comes back: an HTTP/2 SETTINGS frame (a gRPC server), a TLS alert
(a TLS server; most just hang up, so a TLS handshake is tried next), ``HTTP/1.x`` (a web
server), nothing. :func:`explain` (pure) turns that into one
sentence that names the side that expects TLS or says "not a gRPC server".
"""

from __future__ import annotations

import errno
import socket
import ssl
from typing import Literal

import trio

#: The HTTP/2 client connection preface, then an empty SETTINGS frame (RFC 9113, 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
#: Seconds the probe may take in all.
PROBE_TIMEOUT = 3.0

Answer = Literal["refused", "unresolved", "unreachable", "http2", "tls", "http1", "closed",
                 "silent", "other"]


def classify_answer(data: bytes) -> Answer:
    """What the first bytes a server sent after our preface say about it (pure)."""
    if not data:
        return "closed"
    if data[:1] in (b"\x15", b"\x16") and data[1:2] == b"\x03":  # TLS alert / handshake record
        return "tls"
    if data.startswith(b"HTTP/"):
        return "http1"
    if len(data) >= 9 and data[3] == 0x04:  # a frame header whose type is SETTINGS
        return "http2"
    return "other"


def explain(answer: Answer, target: str, *, client_tls: bool,
            spoke_grpc: bool = False) -> str | None:
    """One sentence for the operator, or ``None`` when the probe found nothing wrong (pure).

    ``spoke_grpc``: the target answered gRPC calls earlier in this run (the connection was
    lost later): a target that now stays silent or hangs up stopped answering, it is not some
    other kind of server."""
    if answer == "refused":
        return (f"nothing listens on {target} (connection refused): is the server running "
                f"(`memoh-trio serve --listen {target}` or the container's), and on this port?")
    if answer == "unresolved":
        host = target.rpartition(":")[0].strip("[]")
        return (f"the host name {host!r} does not resolve here: check its spelling, and run "
                "where the container's network name is known")
    if answer == "unreachable":
        return f"{target} cannot be reached: check the host name, the port and the network"
    if answer == "tls" and not client_tls:
        return (f"the server at {target} expects TLS and the client spoke plaintext: pass "
                "--tls-ca (and --tls-cert/--tls-key if it asks for client certificates)")
    if answer == "http2" and client_tls:
        return (f"the server at {target} speaks plaintext HTTP/2 and the client expects TLS: "
                "drop --tls-ca/--tls-cert/--tls-key, or start the server with TLS")
    if answer == "http1":
        return f"{target} is not a gRPC server: it answered in HTTP/1 (a web server?)"
    if answer in ("closed", "silent") and spoke_grpc:
        now = {"closed": "now accepts a connection and closes it without a word",
               "silent": f"now sends nothing within {PROBE_TIMEOUT:g} s of a new connection"}
        return (f"the server at {target} answered earlier and {now[answer]}: is it stopped, "
                "overloaded or restarting? run again once it answers (resume skips what is "
                "there)")
    if answer in ("closed", "other", "silent") and not client_tls:
        what = {"closed": "it accepted the connection and closed it without a word",
                "other": "it answered with something that is not HTTP/2",
                "silent": f"it sent nothing within {PROBE_TIMEOUT:g} s"}[answer]
        return f"{target} is not a gRPC server: {what}"
    return None


async def probe(host: str, port: int) -> Answer:
    """Connect once, send the HTTP/2 preface, classify the answer."""
    with trio.move_on_after(PROBE_TIMEOUT):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except socket.gaierror:
            return "unresolved"
        except OSError as exc:
            refused = _refused(exc)
            return "refused" if refused else "unreachable"
        async with stream:
            data = b""
            try:
                await stream.send_all(PREFACE)
                data = await stream.receive_some(4096)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return "closed"
            return classify_answer(data)
    return "silent"


def _refused(exc: BaseException | None) -> bool:
    """Whether a connection error (trio wraps every attempt's error) was a refusal."""
    if exc is None:
        return False
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_refused(e) for e in exc.exceptions)
    return _refused(exc.__cause__)


async def speaks_tls(host: str, port: int) -> bool:
    """Whether a TLS handshake (certificate not checked: this only asks the question) succeeds."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with trio.move_on_after(PROBE_TIMEOUT):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            return False
        tls = trio.SSLStream(stream, context, server_hostname=host)
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            return False
        finally:
            await trio.aclose_forcefully(tls)
        return True
    return False


async def diagnose(host: str, port: int, *, client_tls: bool,
                   spoke_grpc: bool = False) -> str | None:
    """A sentence that says what is wrong with the target, if the probe can tell
    (``spoke_grpc``: see :func:`explain`)."""
    answer = await probe(host, port)
    if answer in ("closed", "other", "silent") and not client_tls and not spoke_grpc \
            and await speaks_tls(host, port):
        answer = "tls"  # a TLS server drops a plaintext preface without a word
    return explain(answer, f"{host}:{port}", client_tls=client_tls, spoke_grpc=spoke_grpc)
