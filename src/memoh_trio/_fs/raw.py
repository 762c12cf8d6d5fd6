"""WriteRaw's sink: :class:`RawWriter` (a temporary sibling, renamed into place at commit) and
its direct-I/O staging buffers; :func:`write_file` (WriteFile) on top of it.

The parent directory is resolved once (:func:`.resolve.resolve`, mode ``"parent"``) and held open
for the whole upload; the final name is never followed.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import secrets
import stat as stat_mod
import threading

from .._paths import SERVER_TEMP_PREFIX
from .hooks import ServerHooks
from .resolve import resolve, with_path

#: Permissions of created files (before the process umask).
FILE_MODE = 0o666
#: Temporary upload files are siblings named ``.memoh-tmp-<random hex>``.
TEMP_PREFIX = SERVER_TEMP_PREFIX

_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


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
        self._res = resolve(root_fd, path, mode="parent", create=True, allow_root=False)
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
            raise with_path(exc, path) from exc
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
                raise with_path(exc, self.path) from exc

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
            raise with_path(exc, self.path) from exc
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

