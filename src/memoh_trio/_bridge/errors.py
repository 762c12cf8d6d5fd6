"""Errors at the edge: grpclib, h2 and transport exceptions mapped onto :mod:`memoh_trio._errors`.

Also the two internal errors a call raises about its *source* (not the server), which become
``SourceReadError`` / ``SourceChanged`` (in :meth:`.channel.BridgeChannel.write_raw` and
:meth:`memoh_trio._client.Client.exec`).
"""

from __future__ import annotations

import os
import re
import socket
import ssl

import grpclib.exceptions
import h2.exceptions

from .. import _errors


class SourceFailure(Exception):
    """Internal: reading the WriteRaw source or the Exec stdin failed (wraps the error)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class SizeMismatch(Exception):
    """Internal: the source did not have exactly ``expected_size`` bytes."""


def describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):  # errno is the resolver's (EAI_*), not an OS errno
        return f"cannot resolve the host name ({(exc.strerror or str(exc)).lower()})"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


#: grpclib's messages for an HTTP/2 answer that is not gRPC (grpclib/client.py, Stream:
#: ``_raise_for_status``, ``_raise_for_content_type``).
_HTTP_STATUS = re.compile(r"^Received :status = '(\d+)'$")
_CONTENT_TYPE = re.compile(r"^(?:Missing content-type header|Invalid content-type: (.*))$")


def not_grpc_answer(message: str) -> str | None:
    """What an HTTP/2 answer that is no gRPC answer was, from grpclib's message (pure):
    ``"HTTP/2 status 404"``, ``"HTTP/2 answer with content-type 'text/html'"``, else ``None``."""
    match = _HTTP_STATUS.match(message)
    if match:
        return f"HTTP/2 status {match.group(1)}"
    match = _CONTENT_TYPE.match(message)
    if match:
        return ("HTTP/2 answer without a content-type" if match.group(1) is None
                else f"HTTP/2 answer with content-type {match.group(1)}")
    return None


def map_error(exc: BaseException, method: str, target: str) -> BaseException:
    """Translate grpclib/transport exceptions into memoh-trio errors (others pass unchanged)."""
    if isinstance(exc, grpclib.exceptions.GRPCError):
        not_grpc = not_grpc_answer(exc.message or "")
        if not_grpc is not None:  # an HTTP/2 server, but not a gRPC one (a proxy, an ingress)
            return _errors.Unavailable(f"{target} is not a gRPC server ({not_grpc})",
                                       method=method)
        return _errors.error_for_status(int(exc.status.value), exc.message or "", method=method)
    if isinstance(exc, grpclib.exceptions.StreamTerminatedError):
        return _errors.Unavailable(f"connection to {target} broke: {exc}", method=method)
    if isinstance(exc, grpclib.exceptions.ProtocolError):
        return _errors.Unavailable(f"protocol error talking to {target}: {exc}", method=method)
    if isinstance(exc, h2.exceptions.NoSuchStreamError):
        # Stream-level: the server closed (or reset) this one call; the connection is fine.
        return _errors.RPCError(f"the server closed the {method} stream early",
                                status=_errors.Status.UNKNOWN, method=method)
    if isinstance(exc, h2.exceptions.H2Error):  # connection-level HTTP/2 error: it is dead
        return _errors.Unavailable(f"HTTP/2 protocol error talking to {target}: {exc}",
                                   method=method)
    if isinstance(exc, AttributeError) and "_transport" in str(exc):
        # grpclib 0.4 (protocol.py, Connection.create_stream) reads ``self._transport`` after
        # connection_lost() deleted it: the peer accepted and closed at once.
        return _errors.Unavailable(f"connection to {target} was closed by the peer",
                                   method=method)
    if isinstance(exc, TimeoutError):  # grpclib's deadline (before OSError: TimeoutError is one)
        return _errors.DeadlineExceeded("deadline exceeded", method=method)
    if isinstance(exc, (ConnectionError, OSError, EOFError)):
        return _errors.Unavailable(
            f"connection to {target} failed: {describe_os_error(exc)}", method=method
        )
    return exc

