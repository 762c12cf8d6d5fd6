"""Exit codes of the ``memoh-trio`` command: a contract with scripts and operators."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .. import _errors as errors

if TYPE_CHECKING:
    from .._report import MigrationReport

# Exit codes: a contract with scripts and operators. Keep them stable.
EXIT_OK = 0  # migrated, already migrated, or nothing to do
EXIT_INCOMPLETE = 1  # some entries failed: the source is kept and not renamed (a fleet: any bot)
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
    EXIT_UNREACHABLE: "target unreachable, not gRPC, or TLS mismatch (migrate-all: every "
    "incomplete bot's, and none migrated)",
    EXIT_REFUSED: "target refused the call (authentication or permission; migrate-all: as 3)",
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
    cause = errors.connection_cause(exc)
    if cause is not None:
        return EXIT_FOR_CAUSE[cause]
    return EXIT_INCOMPLETE


#: The exit code of a connection failure, by :func:`memoh_trio._errors.connection_cause`.
EXIT_FOR_CAUSE = {"unreachable": EXIT_UNREACHABLE, "refused": EXIT_REFUSED}


def fleet_exit_code(reports: Sequence[MigrationReport]) -> int:
    """One exit code for a fleet's reports (pure): 0 when every bot is ok; 3 (4) when no bot was
    migrated by this run and every incomplete bot failed because its container could not be
    reached (refused our credentials): nothing was done and the cause is the same for all;
    otherwise 1 (some bot is incomplete)."""
    bad = [r for r in reports if not r.ok]
    if not bad:
        return EXIT_OK
    causes = {r.cause for r in bad}
    if len(causes) == 1 and None not in causes and not any(
            r.status == "migrated" for r in reports):
        return EXIT_FOR_CAUSE[causes.pop()]  # type: ignore[index]
    return EXIT_INCOMPLETE

