"""Reading operations: Stat, ListDir, ReadFile and the file a ReadRaw streams, formatted as
Memoh's Go server formats them (``FileMode.String()``, RFC 3339 times, numbered lines).

Symlinks inside ROOT are followed, as Go's ``os.Stat`` does (:func:`.resolve.resolve`, mode
``"follow"``); ListDir lists symlinks and never descends into them.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import os
import stat as stat_mod
from collections.abc import Iterator
from typing import BinaryIO

from .._paths import InvalidPath, split_request_path
from .resolve import DIR_FLAGS, open_resolved_dir, require_path, resolve, with_path

#: Bytes probed for a NUL to call a file binary (Memoh's Go server: 8 KiB).
BINARY_PROBE_BYTES = 8 * 1024
#: ReadFile limits, as in Memoh's Go server.
READ_MAX_LINES = 200
READ_MAX_BYTES = 5120
READ_MAX_LINE_RUNES = 1000
#: Bytes of a line kept: enough for READ_MAX_LINE_RUNES characters and one more (UTF-8: at most
#: 4 bytes each), so that a cut line still shows it was cut.
LINE_KEEP_BYTES = 4 * (READ_MAX_LINE_RUNES + 1)
#: Piece in which the rest of a longer line is read and dropped.
_SKIP_BYTES = 64 * 1024

# O_NONBLOCK: opening a FIFO must not hang the server; the type is checked right after.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


# --------------------------------------------------------------------------- Go formatting

# Go's FileMode.String(): type/attribute letters in this bit order, then rwxrwxrwx.
_GO_MODE_LETTERS = "dalTLDpSugct?"


def go_mode_string(st_mode: int) -> str:
    """Format a ``st_mode`` as Go's ``os.FileMode.String()`` does (``-rw-r--r--``,
    ``drwxr-xr-x``, ``Lrwxrwxrwx``, ``Dcrw-rw-rw-``, ``dtrwxrwxrwx``)."""
    fmt = stat_mod.S_IFMT(st_mode)
    flags = {
        "d": fmt == stat_mod.S_IFDIR,
        "L": fmt == stat_mod.S_IFLNK,
        "D": fmt in (stat_mod.S_IFBLK, stat_mod.S_IFCHR),
        "p": fmt == stat_mod.S_IFIFO,
        "S": fmt == stat_mod.S_IFSOCK,
        "u": bool(st_mode & stat_mod.S_ISUID),
        "g": bool(st_mode & stat_mod.S_ISGID),
        "c": fmt == stat_mod.S_IFCHR,
        "t": bool(st_mode & stat_mod.S_ISVTX),
    }
    head = "".join(letter for letter in _GO_MODE_LETTERS if flags.get(letter))
    perm = "".join(
        ch if st_mode & (1 << (8 - i)) else "-" for i, ch in enumerate("rwxrwxrwx")
    )
    return (head or "-") + perm


def rfc3339(timestamp: float) -> str:
    """Go's ``time.RFC3339`` in UTC (``2006-01-02T15:04:05Z``), seconds precision."""
    when = datetime.datetime.fromtimestamp(int(timestamp), tz=datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One FileEntry of the wire protocol."""

    path: str
    is_dir: bool
    size: int
    mode: str
    mod_time: str


def entry_from_stat(path: str, st: os.stat_result) -> Entry:
    return Entry(
        path=path,
        is_dir=stat_mod.S_ISDIR(st.st_mode),
        size=st.st_size,
        mode=go_mode_string(st.st_mode),
        mod_time=rfc3339(st.st_mtime),
    )


# --------------------------------------------------------------------------- operations


def stat(root_fd: int, path: str) -> Entry:
    """Stat (symlinks inside ROOT followed, like Go's ``os.Stat``); ``path`` of the entry is the
    base name (``"/"`` for ROOT)."""
    require_path(path)
    with resolve(root_fd, path, mode="follow") as res:
        try:
            if res.name is None:
                st = os.fstat(res.dir_fd)
            else:
                st = os.stat(res.name, dir_fd=res.dir_fd, follow_symlinks=False)
        except OSError as exc:
            raise with_path(exc, path) from exc
    parts = split_request_path(path)
    return entry_from_stat(parts[-1] if parts else "/", st)


def _scan_sorted(dir_fd: int) -> list[os.DirEntry[str]]:
    with os.scandir(dir_fd) as it:
        return sorted(it, key=lambda e: e.name)


def _walk_entries(dir_fd: int, prefix: str, recursive: bool) -> Iterator[Entry]:
    for de in _scan_sorted(dir_fd):
        try:
            st = de.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # vanished since the scan
        rel = f"{prefix}{de.name}"
        yield entry_from_stat(rel, st)
        if recursive and stat_mod.S_ISDIR(st.st_mode):
            try:
                child = os.open(de.name, DIR_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue  # unreadable, vanished or swapped for a symlink: skipped, as Go does
            try:
                yield from _walk_entries(child, rel + "/", recursive)
            except OSError:
                continue
            finally:
                os.close(child)


def list_dir(root_fd: int, path: str, recursive: bool = False) -> list[Entry]:
    """Entries of a directory sorted by name (recursive: pre-order, paths relative to the listed
    directory). Symlinks are listed, never descended into."""
    with resolve(root_fd, path, mode="follow") as res:
        try:
            fd = open_resolved_dir(res)
        except OSError as exc:
            raise with_path(exc, path) from exc
    try:
        return list(_walk_entries(fd, "", recursive))
    except OSError as exc:
        raise with_path(exc, path) from exc
    finally:
        os.close(fd)


def open_regular(root_fd: int, path: str) -> int:
    """Open a regular file for reading (symlinks inside ROOT followed); the caller closes it."""
    with resolve(root_fd, path, mode="follow", allow_root=False) as res:
        if res.name is None:
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        try:
            fd = os.open(res.name, _READ_FLAGS, dir_fd=res.dir_fd)
        except OSError as exc:
            raise with_path(exc, path) from exc
    try:
        st = os.fstat(fd)
        if stat_mod.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if not stat_mod.S_ISREG(st.st_mode):
            raise InvalidPath(f"{path!r} is not a regular file", path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _truncate_runes(line: str) -> str:
    if len(line) > READ_MAX_LINE_RUNES:
        return line[:READ_MAX_LINE_RUNES] + "..."
    return line


def _lines(f: BinaryIO, keep: int) -> Iterator[tuple[bytes, bool]]:
    """Each line of ``f`` as ``(its first bytes, up to keep; whether that is the whole line)``,
    without its newline when whole; never more than ``keep`` bytes of a line in memory."""
    while raw := f.readline(keep):
        if raw.endswith(b"\n"):
            yield raw[:-1], True
            continue
        if len(raw) < keep:  # the last line, without a newline
            yield raw, True
            return
        whole = True
        while rest := f.readline(_SKIP_BYTES):  # the rest of a long line: skipped
            whole = False
            if rest.endswith(b"\n"):
                break
        yield raw, whole


def read_file(root_fd: int, path: str, line_offset: int = 0,
              n_lines: int = 0) -> tuple[str, int, bool]:
    """Numbered lines (``%6d\\t%s\\n``) from the 1-based ``line_offset``, as Memoh's Go server:
    at most ``n_lines`` (≤ 200) lines and 5120 bytes, lines cut at 1000 characters.

    Reads no more of a line than it can return (:data:`LINE_KEEP_BYTES`): a 512 MiB file
    without a newline is scanned in 64 KiB pieces, not held (it took the server to 1.18 GB).

    Returns:
        ``(content, total_lines, binary)``; a NUL in the first 8 KiB → ``("", 0, True)``.
    """
    fd = open_regular(root_fd, path)
    with os.fdopen(fd, "rb", buffering=64 * 1024) as f:
        if b"\x00" in f.read(BINARY_PROBE_BYTES):
            return "", 0, True
        f.seek(0)
        first = max(line_offset, 1)
        count = n_lines if 1 <= n_lines <= READ_MAX_LINES else READ_MAX_LINES
        out: list[str] = []
        size = 0
        total = 0
        full = False
        for line, whole in _lines(f, LINE_KEEP_BYTES):
            total += 1
            if full or total < first:
                continue
            if len(out) >= count:
                full = True
                continue
            if whole and line.endswith(b"\r"):
                line = line[:-1]
            text = f"{total:6d}\t{_truncate_runes(line.decode('utf-8', 'replace'))}\n"
            nbytes = len(text.encode())
            if size + nbytes > READ_MAX_BYTES:
                full = True
                continue
            out.append(text)
            size += nbytes
    return "".join(out), total, False
