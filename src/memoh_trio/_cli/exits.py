"""Exit codes of the ``memoh-trio`` command: a contract with scripts and operators."""

from __future__ import annotations

from .. import _errors as errors

# Exit codes: a contract with scripts and operators. Keep them stable.
EXIT_OK = 0  # migrated, already migrated, or nothing to do
EXIT_INCOMPLETE = 1  # some entries failed: the source is kept and not renamed
EXIT_USAGE = 2  # invalid invocation or input (bad option, missing SRC, SRC not a directory, ...)
EXIT_UNREACHABLE = 3  # the target could not be reached or does not speak gRPC/TLS as configured
EXIT_REFUSED = 4  # the target refused us: missing/wrong token, permission denied
EXIT_BUSY = 5  # another migration of the same source is running (single-flight lock)
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C)
EXIT_TERMINATED = 143  # SIGTERM

EXIT_CODES = {
    EXIT_OK: "migrated (or already migrated / nothing to do)",
    EXIT_INCOMPLETE: "incomplete: some entries failed; the source was kept, not renamed",
    EXIT_USAGE: "invalid invocation or input",
    EXIT_UNREACHABLE: "target unreachable, not gRPC, or TLS mismatch",
    EXIT_REFUSED: "target refused the call (authentication or permission)",
    EXIT_BUSY: "another migration of this source is running",
    EXIT_INTERRUPTED: "interrupted (SIGINT); nothing renamed",
    EXIT_TERMINATED: "terminated (SIGTERM); nothing renamed",
}


def exit_code_for(exc: BaseException) -> int:
    """Map an exception that ended a command to its exit code."""
    if isinstance(exc, errors.ConfigError | errors.SourceError):
        return EXIT_USAGE
    if isinstance(exc, errors.MigrationBusy):
        return EXIT_BUSY
    if isinstance(exc, errors.Unauthenticated | errors.PermissionDenied):
        return EXIT_REFUSED
    if isinstance(exc, errors.Unavailable | errors.DeadlineExceeded):
        return EXIT_UNREACHABLE
    return EXIT_INCOMPLETE

