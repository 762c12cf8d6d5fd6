"""What the client's calls return: plain frozen dataclasses, with no I/O and no gRPC types.

Re-exported by :mod:`memoh_trio._client` and, publicly, by :mod:`memoh_trio`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._dirindex import mode_is_regular


@dataclass(frozen=True)
class FileEntry:
    """A file or directory as reported by Stat / ListDir (``mode`` in Go's FileMode form)."""

    path: str
    is_dir: bool
    size: int
    mode: str
    mod_time: str

    @property
    def is_regular(self) -> bool:
        """Whether it is a regular file: Go's FileMode string has no type letter (a symlink
        ``L``, device ``D``/``c``, FIFO ``p``, socket ``S``, directory ``d``, irregular ``?``)
        before its nine permission characters; only the set-id and sticky bits may be there."""
        return not self.is_dir and mode_is_regular(self.mode)


@dataclass(frozen=True)
class ReadFileResult:
    content: str
    total_lines: int
    binary: bool


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True)
class WriteResult:
    """Outcome of :meth:`memoh_trio.Client.write_raw`.

    ``bytes_written`` is what the server reports, ``bytes_read`` what was read from the source
    (always equal on success), ``sha256`` the hex digest of the data sent when asked for.
    """

    bytes_written: int
    bytes_read: int
    sha256: str | None
