"""Opening a source file safely: the file the walk classified, or nothing.

Between the walk's ``lstat`` and the copy, anyone who can write in the source tree can replace a
file: by a symlink to a file outside it (whose bytes would then be sent to the container), by a
FIFO (an ``open`` that blocks for ever), by another file. So a source file is never opened by a
plain path open:

- :func:`open_source` opens it with ``O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC``: a symlink
  fails (``ELOOP``) instead of being followed, a FIFO or a file under a lease opens (or fails) at
  once instead of blocking; then ``fstat`` on the descriptor must show the same regular file the
  walk saw (:func:`identity_error`: ``st_dev``, ``st_ino``, size, mtime), and only then is the
  descriptor made blocking and handed to the reader. Nothing has been read from it yet.
- :func:`check_after` repeats the identity check once the bytes were read: on the descriptor
  (the file was not modified in place: size and mtime) and on the path (``lstat``: the path
  still names that file, so what is renamed and reported is what was sent).

The WriteRaw reader reads the file through :func:`reader_path`, ``/proc/self/fd/N``: Linux
resolves it to the already-open, already-checked inode (not to whatever the source path names
now), so the bridge's page-cache fast path (``preadv(RWF_NOWAIT)`` on its own descriptor) is kept
without a bridge change. Where ``/proc`` is missing the caller passes a file object instead.

What this does not catch: a file rewritten in place between the two checks that ends with the
same size and the same mtime (mtime can be set back by its owner); ``--verify sha256`` compares
the container's copy with the bytes read, not with a later state of the file. A device node
swapped in after the walk is opened (its driver's ``open`` runs; nothing is read) before
``fstat`` refuses it: an ``O_PATH`` handle checked first and its inode reopened through
``/proc/self/fd`` would avoid that at ~4 µs per file (see the README's guarantees).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
from collections.abc import Callable
from typing import Protocol

#: Flags of every open of a source file (see the module docstring).
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


class Identity(Protocol):
    """What the walk recorded of a regular file (a :class:`memoh_trio._plan.Action` has it)."""

    @property
    def host_path(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def mtime_ns(self) -> int: ...
    @property
    def dev(self) -> int: ...
    @property
    def ino(self) -> int: ...


class SourceChanged(Exception):
    """The source entry is not (or no longer) the regular file the walk classified."""


def identity_error(st: os.stat_result, want: Identity) -> str | None:
    """``None`` if ``st`` is the regular file ``want`` describes, else what differs (pure)."""
    if not stat.S_ISREG(st.st_mode):
        return f"the file changed after it was listed (replaced by {_type_name(st.st_mode)})"
    if (st.st_dev, st.st_ino) != (want.dev, want.ino):
        return "the file changed after it was listed (replaced by another file)"
    if st.st_size != want.size:
        return (f"the file changed after it was listed (size {want.size} -> {st.st_size} "
                "bytes)")
    if st.st_mtime_ns != want.mtime_ns:
        return "the file changed after it was listed (it was modified)"
    return None


def _type_name(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return f"a file of type {stat.S_IFMT(mode):#o}"


def open_error(exc: OSError) -> str:
    """An error of :data:`OPEN_FLAGS` ``open`` in plain words."""
    if exc.errno == errno.ELOOP:
        return "the file changed after it was listed (replaced by a symlink, not followed)"
    if exc.errno == errno.ENOENT:
        return "the file vanished after it was listed (removed or renamed)"
    if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
        return "the file is locked by another process (a lease): not waited for"
    if exc.errno == errno.ENXIO:
        return "the file changed after it was listed (replaced by a special file)"
    text = exc.strerror or str(exc)
    return "cannot open: " + text[:1].lower() + text[1:]


def open_source(want: Identity, *, blocking: bool = True) -> int:
    """Open ``want.host_path`` safely and check it is the file the walk saw; a blocking fd
    (``blocking=False``: left ``O_NONBLOCK``, which changes nothing for a regular file's reads
    and saves two ``fcntl`` calls per file).

    Never blocks on a FIFO or a lease and never follows a symlink (see the module docstring).

    Raises:
        SourceChanged: it cannot be opened, or it is not the same regular file (the message
            says why, in plain words).
    """
    try:
        fd = os.open(want.host_path, OPEN_FLAGS)
    except OSError as exc:
        raise SourceChanged(open_error(exc)) from None
    try:
        why = identity_error(os.fstat(fd), want)
        if why is not None:
            raise SourceChanged(why)
        if blocking:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    except OSError as exc:
        os.close(fd)
        raise SourceChanged(f"cannot open: {exc.strerror or exc}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_after(fd: int, want: Identity) -> str | None:
    """After the copy: ``None`` if the open file and the path are both still ``want``."""
    try:
        why = identity_error(os.fstat(fd), want)
    except OSError as exc:
        return f"cannot check the file after copying it: {exc.strerror or exc}"
    if why is not None:
        return why.replace("after it was listed", "while it was copied")
    return check_path(want, when="while it was copied")


def check_path(want: Identity, *, when: str = "after it was listed") -> str | None:
    """``None`` if the path still names ``want`` (``lstat``, never followed)."""
    try:
        st = os.lstat(want.host_path)
    except FileNotFoundError:
        return f"the file vanished {when} (removed or renamed)"
    except OSError as exc:
        return f"cannot check the file: {exc.strerror or exc}"
    why = identity_error(st, want)
    return None if why is None else why.replace("after it was listed", when)


def read_whole(want: Identity) -> bytes:
    """Read a (small) source file whole, safely, checked before and after.

    Raises:
        SourceChanged: see :func:`open_source`; also when the bytes read are not ``want.size``
            or the file changed while it was read.
    """
    fd = open_source(want, blocking=False)  # a regular file (checked): reads never wait
    try:
        data = _read_upto(fd, want.size + 1)
        if len(data) != want.size:
            raise SourceChanged(f"the file changed while it was copied ({want.size} bytes "
                                f"listed, {len(data)} read)")
        why = check_after(fd, want)
        if why is not None:
            raise SourceChanged(why)
        return data
    finally:
        os.close(fd)


def _read_upto(fd: int, n: int) -> bytes:
    """Up to ``n`` bytes from ``fd``: reads until ``n`` or the end of the file. A regular file's
    short read is its end (one ``read`` per small file, not a second one to see the end); a
    file that grows meanwhile is caught by the ``fstat`` after the read (:func:`check_after`)."""
    first = os.read(fd, n)
    if len(first) < n:
        return first
    parts = [first]
    got = len(first)
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def reader_path(fd: int) -> str | None:
    """A path the WriteRaw reader can open that names the already-open inode of ``fd``
    (``/proc/self/fd/N``), or ``None`` where there is no such thing (no ``/proc``)."""
    path = f"/proc/self/fd/{fd}"
    try:
        st_proc = os.stat(path)
        st_fd = os.fstat(fd)
    except OSError:
        return None
    if (st_proc.st_dev, st_proc.st_ino) != (st_fd.st_dev, st_fd.st_ino):
        return None
    return path


#: Bytes hashed per read by :func:`sha256_file`.
HASH_CHUNK = 1024 * 1024


def sha256_file(want: Identity, stop: Callable[[], bool] = lambda: False) -> str:
    """The SHA-256 of a source file, opened and checked like :func:`open_source`, and checked
    again after the last byte (:func:`check_after`). ``stop()`` is asked between chunks (a
    cancelled caller abandons the thread: it then stops reading).

    Raises:
        SourceChanged: not the file the walk saw, or it changed while it was read.
    """
    fd = open_source(want)
    try:
        h = hashlib.sha256()
        n = 0
        while not stop():
            chunk = os.read(fd, HASH_CHUNK)
            if not chunk:
                break
            n += len(chunk)
            h.update(chunk)
        if n != want.size:
            raise SourceChanged(f"the file changed while it was read ({want.size} bytes "
                                f"listed, {n} read)")
        why = check_after(fd, want)
        if why is not None:
            raise SourceChanged(why.replace("copied", "read"))
        return h.hexdigest()
    finally:
        os.close(fd)
