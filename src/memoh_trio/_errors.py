"""The exception hierarchy of memoh-trio.

Every error that crosses the public API is a :class:`MemohError`. gRPC failures are
:class:`RPCError` subclasses chosen by status code (see :func:`error_for_status`), carrying the
server's status message, so callers can write ``except NotFound:`` instead of comparing codes.
This module does no I/O and imports neither asyncio nor grpclib: the bridge maps grpclib's
``GRPCError`` and transport errors onto these classes at the edge.
"""

from __future__ import annotations

import enum
from typing import Literal


class Status(enum.IntEnum):
    """gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class MemohError(Exception):
    """Base class of every error memoh-trio raises on purpose."""


class RPCError(MemohError):
    """A gRPC call failed with a non-OK status.

    Attributes:
        status: the gRPC status code.
        message: the status message sent by the server (may be empty).
        method: the RPC name, e.g. ``"WriteRaw"``, when known.
    """

    status: Status = Status.UNKNOWN

    def __init__(
        self, message: str = "", *, status: Status | None = None, method: str = ""
    ) -> None:
        if status is not None:
            self.status = status
        self.message = message
        self.method = method
        where = f"{method}: " if method else ""
        text = f"{where}{self.status.name}"
        super().__init__(f"{text}: {message}" if message else text)


class Cancelled(RPCError):
    status = Status.CANCELLED


class InvalidArgument(RPCError):
    status = Status.INVALID_ARGUMENT


class DeadlineExceeded(RPCError):
    status = Status.DEADLINE_EXCEEDED


class NotFound(RPCError):
    status = Status.NOT_FOUND


class AlreadyExists(RPCError):
    status = Status.ALREADY_EXISTS


class PermissionDenied(RPCError):
    status = Status.PERMISSION_DENIED


class ResourceExhausted(RPCError):
    status = Status.RESOURCE_EXHAUSTED


class FailedPrecondition(RPCError):
    status = Status.FAILED_PRECONDITION


class Aborted(RPCError):
    status = Status.ABORTED


class Unimplemented(RPCError):
    status = Status.UNIMPLEMENTED


class Internal(RPCError):
    status = Status.INTERNAL


class Unavailable(RPCError):
    """The server could not be reached, or the connection broke mid-call."""

    status = Status.UNAVAILABLE


class Unauthenticated(RPCError):
    status = Status.UNAUTHENTICATED


_BY_STATUS: dict[Status, type[RPCError]] = {
    cls.status: cls
    for cls in (
        Cancelled, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists, PermissionDenied,
        ResourceExhausted, FailedPrecondition, Aborted, Unimplemented, Internal, Unavailable,
        Unauthenticated,
    )
}


def error_for_status(status: int, message: str = "", *, method: str = "") -> RPCError:
    """Build the most specific :class:`RPCError` for a status code.

    Codes without a dedicated class (UNKNOWN, OUT_OF_RANGE, DATA_LOSS, or a code this version does
    not know) give a plain :class:`RPCError` whose ``status`` says which.
    """
    try:
        code = Status(status)
    except ValueError:
        code = Status.UNKNOWN
    cls = _BY_STATUS.get(code, RPCError)
    return cls(message, status=code, method=method)


class ConfigError(MemohError, ValueError):
    """Invalid configuration or input given by the caller (bad target, bad size, ...)."""


class SourceError(MemohError):
    """The migration source is missing, not a directory, or unreadable."""


class MigrationBusy(MemohError):
    """Another migration of the same source holds the single-flight lock."""


class SourceReadError(MemohError):
    """Reading the local source of a WriteRaw stream failed; the stream was aborted."""


class SourceChanged(MemohError):
    """A WriteRaw source did not have the expected size (it changed while being read); aborted."""


class Stalled(MemohError):
    """A transfer made no progress for longer than its stall timeout; the stream was cancelled."""


#: Why a migration could not go on with its container (:func:`connection_cause`).
Cause = Literal["unreachable", "refused"]


def connection_cause(exc: BaseException) -> Cause | None:
    """``"unreachable"`` for an error that says the container could not be reached, does not
    speak gRPC (or TLS as configured) or stopped answering; ``"refused"`` for one that says it
    refused our credentials or the call; ``None`` for any other (pure: one place decides; the
    CLI's exit codes 3 and 4 follow it)."""
    if isinstance(exc, Unauthenticated | PermissionDenied):
        return "refused"
    if isinstance(exc, Unavailable | DeadlineExceeded):
        return "unreachable"
    return None
