"""Synchronous filesystem operations of the server, confined under a root directory fd.

Every operation walks the request path one component at a time from the root's file descriptor,
``os.open(name, O_DIRECTORY | O_NOFOLLOW, dir_fd=parent)``, holding each directory open: there is
no check-then-open window. A symlink met on the way is read with ``readlinkat`` and its target is
walked the same way (relative targets only, never above ROOT, at most :data:`MAX_SYMLINKS`), so
nothing outside ROOT is ever opened, listed, written, renamed or deleted, even if a directory is
swapped for a symlink while the call runs. Final components that are acted on (written, renamed,
deleted) are never followed: the entry itself is the target.

Functions here do blocking system calls and no async I/O; the bridge calls them directly on the
hot paths (WriteRaw, ReadRaw chunks) and from a worker thread for calls that can take long
(recursive ListDir/DeleteFile, ReadFile).

Errors: :class:`~memoh_trio._paths.PathError` for confinement and malformed paths, ``OSError``
(with ``filename`` set to the request path) for the rest; :func:`status_for` maps both onto gRPC
status codes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import mmap
import os
import secrets
import shutil
import stat as stat_mod
import threading
from collections.abc import Iterator
from typing import Literal

from ._errors import Status
from ._paths import (
    SERVER_TEMP_PREFIX,
    InvalidPath,
    PathError,
    PathEscape,
    join,
    split_link_target,
    split_request_path,
)

#: Symlinks followed while resolving one path before giving up with ELOOP (Linux's limit).
MAX_SYMLINKS = 40
#: Bytes probed for a NUL to call a file binary (Memoh's Go server: 8 KiB).
BINARY_PROBE_BYTES = 8 * 1024
#: ReadFile limits, as in Memoh's Go server.
READ_MAX_LINES = 200
READ_MAX_BYTES = 5120
READ_MAX_LINE_RUNES = 1000
#: Permissions of created directories / files (before the process umask).
DIR_MODE = 0o755
FILE_MODE = 0o666
#: Temporary upload files are siblings named ``.memoh-tmp-<random hex>``.
TEMP_PREFIX = SERVER_TEMP_PREFIX

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO must not hang the server; the type is checked right after.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


# --------------------------------------------------------------------------- fault injection


@dataclasses.dataclass
class ServerHooks:
    """Fault-injection seam for tests (issue 4). Costs one ``is None`` test per chunk when unused.

    Attributes:
        fail_write_nth: the Nth chunk write (1-based, counted over every upload of this server)
            raises ``OSError(fail_errno)``; ``None`` never fails.
        fail_errno: the errno of that failure (ENOSPC → RESOURCE_EXHAUSTED, EIO → INTERNAL...).
        stall_after_bytes: an upload stops reading its stream once it has received this many bytes
            (HTTP/2 flow control then stalls the sender) until the call is cancelled.
        writes: chunk writes seen so far (counter, for assertions).
        stalls: uploads that stalled so far (counter).
    """

    fail_write_nth: int | None = None
    fail_errno: int = errno.ENOSPC
    stall_after_bytes: int | None = None
    writes: int = 0
    stalls: int = 0

    def before_write(self, nbytes: int) -> None:
        """Called before each chunk write; raises the injected failure when due."""
        self.writes += 1
        if self.fail_write_nth is not None and self.writes == self.fail_write_nth:
            raise OSError(self.fail_errno, f"injected fault: {os.strerror(self.fail_errno)}")

    def should_stall(self, received: int) -> bool:
        """Whether an upload that has received ``received`` bytes stops reading its stream."""
        return self.stall_after_bytes is not None and received >= self.stall_after_bytes


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


# --------------------------------------------------------------------------- resolution

_Mode = Literal["parent", "follow", "dir"]


class _Resolved:
    """Result of a walk: the open directory ``dir_fd`` and the final ``name`` inside it
    (``None``: the directory itself is the target). Closes the fds it opened."""

    def __init__(self, fds: list[int], name: str | None) -> None:
        self._fds = fds
        self.dir_fd = fds[-1]
        self.name = name

    def close(self) -> None:
        fds, self._fds = self._fds[1:], self._fds[:1]
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> _Resolved:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _raise_with_path(exc: OSError, path: str) -> OSError:
    return OSError(exc.errno, exc.strerror, path)


def _resolve(root_fd: int, path: str, *, mode: _Mode, create: bool = False,
             allow_root: bool = True) -> _Resolved:
    """Walk ``path`` from ``root_fd`` without following any symlink out of ROOT.

    Args:
        mode: ``"parent"``: stop before the last component (it is not followed);
            ``"follow"``: a symlink as last component is followed (inside ROOT);
            ``"dir"``: every component, the last one included, must be a directory (opened).
        create: create missing directories on the way (``mkdir -p``).
        allow_root: see :func:`split_request_path`.
    """
    parts = split_request_path(path, allow_root=allow_root)
    pending = list(reversed(parts))
    fds = [root_fd]
    links = 0
    try:
        while pending:
            name = pending.pop()
            if name == "..":
                if len(fds) == 1:
                    raise PathEscape(f"a symlink in {path!r} leads outside the root", path)
                os.close(fds.pop())
                continue
            last = not pending
            if last and mode == "parent":
                return _Resolved(fds, name)
            if last and mode == "follow":
                try:
                    st = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
                except FileNotFoundError:
                    return _Resolved(fds, name)
                if not stat_mod.S_ISLNK(st.st_mode):
                    return _Resolved(fds, name)
            else:
                try:
                    fds.append(os.open(name, _DIR_FLAGS, dir_fd=fds[-1]))
                    continue
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, DIR_MODE, dir_fd=fds[-1])
                    # A symlink swapped in right now makes this fail (ELOOP): never followed.
                    fds.append(os.open(name, _DIR_FLAGS, dir_fd=fds[-1]))
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
                    if not stat_mod.S_ISLNK(st.st_mode):
                        raise NotADirectoryError(
                            errno.ENOTDIR, "not a directory", join(parts)) from None
            # ``name`` is a symlink: walk its target from the current directory instead.
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
            target = os.readlink(name, dir_fd=fds[-1])
            pending.extend(reversed(split_link_target(target, link=path)))
        return _Resolved(fds, None)
    except PathError:
        _Resolved(fds, None).close()
        raise
    except OSError as exc:
        _Resolved(fds, None).close()
        raise _raise_with_path(exc, path) from exc
    except BaseException:
        _Resolved(fds, None).close()
        raise


def require_path(path: str) -> str:
    """Refuse an empty path where the operation needs one (as Memoh's Go server does)."""
    if not path:
        raise InvalidPath("path is required", path)
    return path


def _open_dir(res: _Resolved) -> int:
    """A new fd for the directory ``res`` designates."""
    if res.name is None:
        return os.open(".", _DIR_FLAGS, dir_fd=res.dir_fd)
    return os.open(res.name, _DIR_FLAGS, dir_fd=res.dir_fd)


def _wrap(exc: OSError, path: str) -> OSError:
    return exc if exc.filename == path else _raise_with_path(exc, path)


# --------------------------------------------------------------------------- operations


def stat(root_fd: int, path: str) -> Entry:
    """Stat (symlinks inside ROOT followed, like Go's ``os.Stat``); ``path`` of the entry is the
    base name (``"/"`` for ROOT)."""
    require_path(path)
    with _resolve(root_fd, path, mode="follow") as res:
        try:
            if res.name is None:
                st = os.fstat(res.dir_fd)
            else:
                st = os.stat(res.name, dir_fd=res.dir_fd, follow_symlinks=False)
        except OSError as exc:
            raise _wrap(exc, path) from exc
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
                child = os.open(de.name, _DIR_FLAGS, dir_fd=dir_fd)
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
    with _resolve(root_fd, path, mode="follow") as res:
        try:
            fd = _open_dir(res)
        except OSError as exc:
            raise _wrap(exc, path) from exc
    try:
        return list(_walk_entries(fd, "", recursive))
    except OSError as exc:
        raise _wrap(exc, path) from exc
    finally:
        os.close(fd)


def open_regular(root_fd: int, path: str) -> int:
    """Open a regular file for reading (symlinks inside ROOT followed); the caller closes it."""
    with _resolve(root_fd, path, mode="follow", allow_root=False) as res:
        if res.name is None:
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        try:
            fd = os.open(res.name, _READ_FLAGS, dir_fd=res.dir_fd)
        except OSError as exc:
            raise _wrap(exc, path) from exc
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


def read_file(root_fd: int, path: str, line_offset: int = 0,
              n_lines: int = 0) -> tuple[str, int, bool]:
    """Numbered lines (``%6d\\t%s\\n``) from the 1-based ``line_offset``, as Memoh's Go server:
    at most ``n_lines`` (≤ 200) lines and 5120 bytes, lines cut at 1000 characters.

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
        for raw in f:
            total += 1
            if full or total < first:
                continue
            if len(out) >= count:
                full = True
                continue
            line = raw.rstrip(b"\n")
            if line.endswith(b"\r"):
                line = line[:-1]
            text = f"{total:6d}\t{_truncate_runes(line.decode('utf-8', 'replace'))}\n"
            nbytes = len(text.encode())
            if size + nbytes > READ_MAX_BYTES:
                full = True
                continue
            out.append(text)
            size += nbytes
    return "".join(out), total, False


def mkdir(root_fd: int, path: str) -> None:
    """``mkdir -p`` (existing directories are fine)."""
    require_path(path)
    _resolve(root_fd, path, mode="dir", create=True, allow_root=True).close()


def delete(root_fd: int, path: str, recursive: bool = False) -> None:
    """Remove a file, symlink (not its target) or empty directory; ``recursive`` removes trees.
    A missing path is a success."""
    try:
        res = _resolve(root_fd, path, mode="parent", allow_root=False)
    except FileNotFoundError:
        return
    with res:
        assert res.name is not None
        name = res.name
        try:
            st = os.stat(name, dir_fd=res.dir_fd, follow_symlinks=False)
            if not stat_mod.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=res.dir_fd)
            elif recursive:
                # fd-based and symlink-safe on Linux (shutil.rmtree.avoids_symlink_attacks).
                shutil.rmtree(name, dir_fd=res.dir_fd)
            else:
                os.rmdir(name, dir_fd=res.dir_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _wrap(exc, path) from exc


def rename(root_fd: int, old_path: str, new_path: str) -> None:
    """Rename an entry (a symlink is renamed, not followed); the target's parents are created."""
    with _resolve(root_fd, old_path, mode="parent", allow_root=False) as src:
        assert src.name is not None
        try:
            os.stat(src.name, dir_fd=src.dir_fd, follow_symlinks=False)
        except OSError as exc:
            raise _wrap(exc, old_path) from exc
        with _resolve(root_fd, new_path, mode="parent", create=True, allow_root=False) as dst:
            assert dst.name is not None
            try:
                os.rename(src.name, dst.name, src_dir_fd=src.dir_fd, dst_dir_fd=dst.dir_fd)
            except OSError as exc:
                raise _wrap(exc, f"{old_path} -> {new_path}") from exc


def _write_all(fd: int, data: bytes | memoryview) -> int:
    view = memoryview(data)
    total = 0
    while total < len(view):
        total += os.write(fd, view[total:])
    return total


# --------------------------------------------------------------------------- direct I/O

#: An upload whose chunks are at least this big is written with ``O_DIRECT`` (see RawWriter).
DIRECT_MIN_CHUNK = 256 * 1024
#: Alignment of O_DIRECT offsets, lengths and buffer addresses (the largest logical block size
#: in common use; 512-byte devices accept it too).
DIRECT_ALIGN = 4096
#: Staging buffer of one upload in direct mode (page-aligned: an anonymous mmap).
DIRECT_BUFFER = 2 * 1024 * 1024
_POOL_MAX = 16

_pool: list[mmap.mmap] = []
_pool_lock = threading.Lock()


def _take_buffer() -> mmap.mmap:
    # Buffers are reused: memory the process already touched costs no page faults (on a VM
    # that backs guest memory lazily, a first touch costs a fault on the host too).
    with _pool_lock:
        if _pool:
            return _pool.pop()
    return mmap.mmap(-1, DIRECT_BUFFER)


def _give_buffer(buf: mmap.mmap) -> None:
    with _pool_lock:
        if len(_pool) < _POOL_MAX:
            _pool.append(buf)
            return
    buf.close()


def _set_direct(fd: int, on: bool) -> bool:
    """Switch ``O_DIRECT`` on or off for ``fd``; False if the filesystem refuses it."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    wanted = flags | os.O_DIRECT if on else flags & ~os.O_DIRECT
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, wanted)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT) == on


class RawWriter:
    """Upload sink: data goes to a temporary sibling of the target, renamed into place by
    :meth:`commit` only; :meth:`discard` (idempotent, also after commit) removes it otherwise.

    The parent directory stays open for the whole upload, so swapping a directory on the path
    for a symlink during the upload cannot redirect it.

    :meth:`write` may run in a worker thread while the event loop receives the next chunk; a
    lock makes :meth:`discard` (at cancellation or shutdown, on the loop thread) wait for a
    write in progress instead of closing the descriptor under it.

    With ``direct=True``, an upload arriving in chunks of :data:`DIRECT_MIN_CHUNK` or more is
    written with ``O_DIRECT``, bypassing the page cache: each chunk is copied into a reused,
    page-aligned staging buffer and its 4 KiB-aligned part written straight to the device; the
    last partial block goes through the page cache at :meth:`commit`. Filling page-cache pages
    not in use is the cost this avoids: a 4 GiB upload took 0.9 s of the server's kernel CPU
    with O_DIRECT and 10.0 s without (``python -m benchmarks.ab_servers --scenario e``); with
    hot pages the two are even (``benchmarks/bench_direct_io.py``). The migrator's ``sync``
    before it renames the source then has nothing of these files left to flush. A
    filesystem that refuses O_DIRECT (at ``fcntl`` or at a write, ``EINVAL``) gets the rest of
    the upload through the page cache: same bytes, same result.
    """

    def __init__(self, root_fd: int, path: str, *, hooks: ServerHooks | None = None,
                 durable: bool = False, direct: bool = False) -> None:
        self.path = path
        self.bytes_written = 0
        #: bytes that went to the file with O_DIRECT (the rest through the page cache).
        self.direct_bytes = 0
        self._hooks = hooks
        self._durable = durable
        self._direct_ok = direct and hasattr(os, "O_DIRECT")
        self._stage: mmap.mmap | None = None
        self._carry = 0  # bytes at the start of the stage not written yet (< DIRECT_ALIGN)
        self._fd = -1
        self._res = _resolve(root_fd, path, mode="parent", create=True, allow_root=False)
        try:
            assert self._res.name is not None
            self._name = self._res.name
            keep_mode: int | None = None
            try:
                st = os.stat(self._name, dir_fd=self._res.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                if stat_mod.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(errno.EISDIR, "is a directory", path)
                if stat_mod.S_ISREG(st.st_mode):
                    # Replacing a file keeps its permission bits, as Memoh's Go server does
                    # (it truncates the file in place: os.Create / os.WriteFile).
                    keep_mode = stat_mod.S_IMODE(st.st_mode) & 0o777
            self.temp_name = TEMP_PREFIX + secrets.token_hex(8)
            self._fd = os.open(self.temp_name, _TEMP_FLAGS, FILE_MODE, dir_fd=self._res.dir_fd)
            if keep_mode is not None:
                os.fchmod(self._fd, keep_mode)
        except OSError as exc:
            self._res.close()
            raise _wrap(exc, path) from exc
        except BaseException:
            self._res.close()
            raise
        self._done = False
        self._lock = threading.Lock()

    def write(self, data: bytes | memoryview) -> None:
        with self._lock:
            if self._fd < 0:
                raise OSError(errno.EBADF, "upload already finished or discarded")
            view = memoryview(data).cast("B")
            if self._hooks is not None:
                self._hooks.before_write(len(view))
            try:
                if (self._stage is None and self._direct_ok and len(view) >= DIRECT_MIN_CHUNK
                        and self.bytes_written % DIRECT_ALIGN == 0):
                    self._start_direct()
                if self._stage is not None:
                    self._write_staged(view)
                else:
                    _write_all(self._fd, view)
                self.bytes_written += len(view)
            except OSError as exc:
                raise _wrap(exc, self.path) from exc

    # -- direct mode (called with the lock held)

    def _start_direct(self) -> None:
        if not _set_direct(self._fd, True):
            self._direct_ok = False
            return
        self._stage = _take_buffer()

    def _write_staged(self, view: memoryview) -> None:
        pos, end = 0, len(view)
        while pos < end:
            stage = self._stage
            if stage is None:  # the filesystem refused a direct write: page cache from here
                _write_all(self._fd, view[pos:])
                return
            take = min(len(stage) - self._carry, end - pos)
            stage[self._carry : self._carry + take] = view[pos : pos + take]
            self._carry += take
            pos += take
            self._flush_aligned()

    def _flush_aligned(self) -> None:
        stage = self._stage
        assert stage is not None
        aligned = self._carry - self._carry % DIRECT_ALIGN
        done = 0
        refused = False
        with memoryview(stage) as mv:
            try:
                while done < aligned:
                    done += os.write(self._fd, mv[done:aligned])
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                refused = True
            else:
                rest = self._carry - aligned
                if rest:
                    mv[:rest] = mv[aligned : self._carry]
        self.direct_bytes += done
        if refused:
            self._stop_direct(done, self._carry)
        else:
            self._carry -= aligned

    def _stop_direct(self, start: int, end: int) -> None:
        """Leave direct mode; ``stage[start:end]`` goes through the page cache."""
        self._direct_ok = False
        try:
            _set_direct(self._fd, False)
            if self._stage is not None and end > start:
                with memoryview(self._stage) as mv:
                    _write_all(self._fd, mv[start:end])
        finally:
            self._release_stage()

    def _release_stage(self) -> None:
        stage, self._stage = self._stage, None
        self._carry = 0
        if stage is not None:
            _give_buffer(stage)

    def commit(self) -> int:
        """Move the data into place; returns the byte count."""
        try:
            with self._lock:
                if self._stage is not None:
                    self._stop_direct(0, self._carry)
            if self._durable:
                os.fdatasync(self._fd)
            fd, self._fd = self._fd, -1
            os.close(fd)
            os.rename(self.temp_name, self._name,
                      src_dir_fd=self._res.dir_fd, dst_dir_fd=self._res.dir_fd)
        except OSError as exc:
            raise _wrap(exc, self.path) from exc
        self._done = True
        self._res.close()
        return self.bytes_written

    def discard(self) -> None:
        """Remove the temporary file (no-op once committed or discarded)."""
        with self._lock:
            self._discard()

    def _discard(self) -> None:
        self._release_stage()
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        if not self._done:
            self._done = True
            try:
                os.unlink(self.temp_name, dir_fd=self._res.dir_fd)
            except FileNotFoundError:
                pass
            finally:
                self._res.close()


def write_file(root_fd: int, path: str, content: bytes, *, durable: bool = False) -> None:
    """Write a whole file (parents created), atomically through a temporary sibling."""
    writer = RawWriter(root_fd, path, durable=durable)
    try:
        writer.write(content)
        writer.commit()
    finally:
        writer.discard()


def open_dir(root_fd: int, path: str) -> int:
    """Open a directory under ROOT (symlinks inside ROOT followed); the caller closes the fd."""
    with _resolve(root_fd, path, mode="dir") as res:
        return os.open(".", _DIR_FLAGS, dir_fd=res.dir_fd)


# --------------------------------------------------------------------------- status mapping

_ERRNO_STATUS: dict[int, Status] = {
    errno.ENOENT: Status.NOT_FOUND,
    errno.EEXIST: Status.ALREADY_EXISTS,
    errno.ENOTEMPTY: Status.FAILED_PRECONDITION,
    errno.ENOTDIR: Status.FAILED_PRECONDITION,
    errno.EISDIR: Status.FAILED_PRECONDITION,
    errno.EXDEV: Status.FAILED_PRECONDITION,
    errno.EBUSY: Status.FAILED_PRECONDITION,
    errno.EACCES: Status.PERMISSION_DENIED,
    errno.EPERM: Status.PERMISSION_DENIED,
    errno.EROFS: Status.PERMISSION_DENIED,
    # ELOOP under O_NOFOLLOW: a symlink appeared where a directory/file was expected.
    errno.ELOOP: Status.PERMISSION_DENIED,
    errno.ENOSPC: Status.RESOURCE_EXHAUSTED,
    errno.EDQUOT: Status.RESOURCE_EXHAUSTED,
    errno.EFBIG: Status.RESOURCE_EXHAUSTED,
    errno.EMFILE: Status.RESOURCE_EXHAUSTED,
    errno.ENFILE: Status.RESOURCE_EXHAUSTED,
    errno.ENOMEM: Status.RESOURCE_EXHAUSTED,
    errno.ENAMETOOLONG: Status.INVALID_ARGUMENT,
    errno.EINVAL: Status.INVALID_ARGUMENT,
    errno.EILSEQ: Status.INVALID_ARGUMENT,
}


def status_for(exc: BaseException) -> tuple[Status, str]:
    """The gRPC status and message for an error raised by this module (pure)."""
    if isinstance(exc, PathEscape):
        return Status.PERMISSION_DENIED, str(exc)
    if isinstance(exc, PathError):
        return Status.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, UnicodeError):
        return Status.INVALID_ARGUMENT, f"path is not valid UTF-8: {exc}"
    if isinstance(exc, OSError):
        code = _ERRNO_STATUS.get(exc.errno or 0, Status.INTERNAL)
        what = exc.strerror or str(exc)
        where = f"{exc.filename}: " if exc.filename else ""
        return code, f"{where}{what}"
    return Status.INTERNAL, f"{type(exc).__name__}: {exc}"
