"""The container agent: one python3 process per migration, spoken to over one Exec stream.

This file is the program itself. It is shipped to the container as the source of
``python3 -S -c SOURCE DEST`` (:func:`memoh_trio._agent.command`) and runs there on the standard
library alone (Memoh's bot image is alpine + python3, nothing installed). The client imports the
same file for the frame codec and the protocol constants, so the wire format is written once.

Wire format, :func:`encode_request` / :func:`encode_reply` / :class:`FrameDecoder`::

    frame = u32 header length | u32 data length | header | data

A request's header is a dict in ``marshal`` format version 2 (builtin: the agent starts without
importing ``json``, which costs python3 ~13 ms of CPU, twice its other imports); a reply's header
is a JSON object (UTF-8), written by a small encoder here: the client never unmarshals what the
container sends (``marshal`` is not safe against crafted input).

Every request header has ``op`` and ``id`` (increasing); the agent answers each request with
exactly one reply, in order, with the same ``id``, ``ok`` and, for per-entry operations,
``records``: one ``{"path", "ok", "error"?, ...}`` per entry. The first exchange is ``hello``:
the client sends its :data:`PROTOCOL_VERSION`, the agent answers with its own; on a mismatch it
answers ``ok: false`` and exits :data:`EXIT_VERSION`.

Operations (every path is relative to DEST, ``/``-separated, no ``.``/``..``/empty components):

``hello`` ``{version}``; ``mkdir`` ``{entries: [{path, mode?}]}`` (missing components created one
at a time); ``write`` ``{path, first, last}`` + bytes (a file, in one or more frames; the caller
names a temporary); ``files`` ``{entries: [{path, size, sha256?, final?, mode?, mtime_ns?,
atime_ns?}]}`` + the entries' bytes back to back (a batch of small files, each written to
``path``, checked and, with ``final``, placed); ``place`` ``{entries: [{tmp, path, size, sha256?,
mode?, mtime_ns?, atime_ns?}]}`` (size and content checked, mode and times set on the open file,
renamed into place); ``symlink`` ``{entries: [{path, target, tmp, mtime_ns?, atime_ns?}]}``;
``meta`` ``{entries: [{path, mode?, mtime_ns?, atime_ns?}]}`` (directories and files; symlinks
get times only); ``delete`` ``{paths}`` (files and links, never directories); ``hash`` ``{paths}``
(``sha256`` and ``size`` of regular files); ``flush`` ``{how: "syncfs"|"fsync"}``: ``syncfs(2)`` of
DEST's file system, or ``fsync`` of every file this agent wrote and of their directories; ``bye``.

Version 2 (version 1 had none of these): ``sha256`` (64 lowercase hex digits) in ``place`` and
``files`` entries, checked against the file's bytes read back through the agent's own
descriptor before anything is renamed, and echoed in the record when it matched; the ``hash``
operation (a missing path: ``ok: false`` and ``absent: true``; a symlink, FIFO, directory or
device: refused, never followed or opened); and every record error that is a failed content
check (a size or a ``sha256`` not the one expected) begins with :data:`CHECK_FAILED` and ``": "``,
so the client tells it (the bytes are bad: send them again) from a refusal (a symlink in the
way, a bad path, ...), whose error never begins so.

Security (issue 25): no path is ever resolved by name from DEST. Each component is opened
relative to its parent's descriptor with ``O_NOFOLLOW``, directories with ``O_DIRECTORY``;
files are created with ``O_NOFOLLOW``; renames, links, deletions and times go through the parent
descriptors (``src_dir_fd``/``dst_dir_fd``/``dir_fd``). A symlink or a non-directory on the way
fails that entry. A request opens each directory on its entries' way once and keeps the
descriptor until it ends; at its end every directory an entry went into is looked up again from
DEST: if it is no longer at its path (swapped for a symlink or moved while the request ran),
every entry placed in it fails. Nothing is written outside DEST by a process that changes
the tree meanwhile: the worst it can do is move a directory (with what was placed in it) aside.
"""

from __future__ import annotations

import errno
import marshal
import os
import stat
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # the agent starts without typing (4 ms of CPU)
    from collections.abc import Callable
    from typing import Any

#: Version of the protocol this file speaks (both sides): bumped on any incompatible change.
PROTOCOL_VERSION = 2
#: How a record's error begins (then ``": "``) when a content check failed: a size or a
#: ``sha256`` not the one expected. Equal to :data:`memoh_trio._scripts.CHECK_FAILED` (the same
#: meaning as the shell mover's records); no other error begins with it.
CHECK_FAILED = "verification failed in the container"
#: Bytes of a frame's ``u32 header length | u32 data length`` (big-endian; read and written
#: with ``int.from_bytes``/``to_bytes``: the agent starts without importing ``struct``).
PREFIX_SIZE = 8
#: Largest header and data a frame may carry (a bigger prefix is a broken stream).
MAX_HEADER = 1 << 20
MAX_DATA = 64 << 20
#: Exit codes of the agent: done (``bye``), the client's version is not ours, the stream broke,
EXIT_OK = 0
EXIT_VERSION = 3
EXIT_PROTOCOL = 4
EXIT_DEST = 5  # the destination directory cannot be opened (or made) without a symlink
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Opening what should be a regular file: never through a link, and never blocking on a FIFO
#: a process put there (``O_NONBLOCK`` changes nothing for a regular file's reads and writes).
_FILE_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_READ_CHUNK = 1 << 20
_HEX = frozenset("0123456789abcdef")


class FrameError(Exception):
    """The byte stream is not a sequence of frames (a bad prefix or header)."""


#: ``marshal`` format of request headers (dicts, lists, str, int, bool, None; any Python 3).
MARSHAL_VERSION = 2


def _frame(head: bytes, data: bytes | memoryview) -> bytes:
    if len(head) > MAX_HEADER or len(data) > MAX_DATA:
        raise FrameError(f"frame too large ({len(head)} B header, {len(data)} B data)")
    return len(head).to_bytes(4, "big") + len(data).to_bytes(4, "big") + head + bytes(data)


def encode_request(header: dict[str, Any], data: bytes = b"") -> bytes:
    """A request frame (client to agent): the header in ``marshal`` format."""
    return _frame(marshal.dumps(header, MARSHAL_VERSION), data)


_JSON_ESCAPES = {i: f"\\u{i:04x}" for i in range(32)}
_JSON_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\"})


def to_json(value: Any) -> str:
    """JSON of the values replies hold (dict, list, str, int, bool, None), without ``json``."""
    if value is None or value is True or value is False:
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{to_json(str(k))}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return '"' + str(value).translate(_JSON_ESCAPES) + '"'


def encode_reply(header: dict[str, Any]) -> bytes:
    """A reply frame (agent to client): the header as JSON."""
    return _frame(to_json(header).encode("utf-8", "backslashreplace"), b"")


def decode_request(head: bytes) -> Any:
    return marshal.loads(head)


def decode_reply(head: bytes) -> Any:
    import json  # the client's side only

    return json.loads(head)


class FrameDecoder:
    """Frames from a byte stream fed in any pieces: ``feed(data)``, then ``next()`` until it
    gives None (a whole frame is not there yet). ``decode`` reads a header (:func:`decode_request`
    in the agent, :func:`decode_reply` in the client). No I/O."""

    def __init__(self, decode: Callable[[bytes], Any]) -> None:
        self._buf = bytearray()
        self._decode = decode

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a frame."""
        return len(self._buf)

    def next(self) -> tuple[dict[str, Any], bytes] | None:
        if len(self._buf) < PREFIX_SIZE:
            return None
        hlen = int.from_bytes(self._buf[:4], "big")
        dlen = int.from_bytes(self._buf[4:PREFIX_SIZE], "big")
        if hlen > MAX_HEADER or dlen > MAX_DATA:
            raise FrameError(f"bad frame prefix ({hlen} B header, {dlen} B data): not a frame")
        end = PREFIX_SIZE + hlen + dlen
        if len(self._buf) < end:
            return None
        try:
            header = self._decode(bytes(self._buf[PREFIX_SIZE:PREFIX_SIZE + hlen]))
        except (ValueError, EOFError, TypeError) as exc:
            raise FrameError(f"bad frame header: {exc}") from None
        if not isinstance(header, dict):
            raise FrameError("bad frame header: not an object")
        data = bytes(self._buf[PREFIX_SIZE + hlen:end])
        del self._buf[:end]
        return header, data


# ----------------------------------------------------------------------------------------------
# The container side


class EntryError(Exception):
    """One entry failed; the message says why (and nothing was written through a link).
    ``extra``: more fields for its record (``absent``)."""

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.extra = extra


class Missing(EntryError):
    """A directory on an entry's way does not exist."""


def _check_failed(why: str) -> EntryError:
    return EntryError(f"{CHECK_FAILED}: {why}")


def _why(exc: OSError, where: str) -> str:
    if exc.errno == errno.ELOOP:
        return f"a symlink is in the way at {where!r}"
    if exc.errno == errno.ENOTDIR:
        return f"not a directory on the way at {where!r}"
    return f"{where!r}: {exc.strerror or exc} ({errno.errorcode.get(exc.errno or 0, exc.errno)})"


def _in_the_way(exc: OSError, name: str, dir_fd: int) -> OSError:
    """``exc`` of opening directory ``name``, told apart: ELOOP for a symlink (Linux answers
    ENOTDIR when ``O_DIRECTORY`` and ``O_NOFOLLOW`` meet one), ENOTDIR for anything else."""
    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
        try:
            is_link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            return exc
        return OSError(errno.ELOOP if is_link else errno.ENOTDIR, exc.strerror)
    return exc


def split_path(path: str) -> list[str]:
    """The components of a relative path; EntryError for anything else."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\x00" in path:
        raise EntryError(f"bad path {path!r}: must be relative and non-empty")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise EntryError(f"bad path {path!r}: empty, '.' or '..' component")
    return parts


class Tree:
    """DEST, reached only through directory descriptors (see the module doc).

    While one request runs (:meth:`hold` ... :meth:`release`), the descriptors of the
    directories it opened are kept and reused (each component is still opened once, relative
    to its parent, without following a link), and whether each directory that got an entry is
    still at its path is checked once, at the request's end, not once per entry."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        # What ``flush`` fsyncs: files this agent placed or changed, and directories whose
        # entries or inode it changed ("" = DEST), in order.
        self.written: dict[str, None] = {}
        self.dirs: dict[str, None] = {}
        # While a request runs: directory descriptors by components, and the directories that
        # got an entry (checked by :meth:`release`).
        self._held: dict[tuple[str, ...], int] | None = None
        self._kept: set[int] = set()
        self._placed: dict[tuple[str, ...], int] = {}

    def hold(self) -> None:
        """Keep the directories opened from now on until :meth:`release`."""
        self._held, self._kept, self._placed = {}, {self.root_fd}, {}

    def release(self) -> set[str]:
        """Close what :meth:`hold` kept; the directories that got an entry meanwhile and are no
        longer at their path (``/``-joined components)."""
        replaced: set[str] = set()
        try:
            for parts, fd in self._placed.items():
                try:
                    self.still_there(fd, list(parts))
                except EntryError:
                    replaced.add("/".join(parts))
        finally:
            for fd in (self._held or {}).values():
                os.close(fd)
            self._held, self._kept, self._placed = None, set(), {}
        return replaced

    def close(self, fd: int) -> None:
        """Done with a descriptor :meth:`open_dir` gave (closed unless held)."""
        if fd not in self._kept:
            os.close(fd)

    def open_dir(self, parts: list[str], create: bool, mode: int = 0o755,
                 fresh: bool = False) -> int:
        """A descriptor of the directory ``parts`` (created component by component when
        ``create``), to give back with :meth:`close`; EntryError when a component is a symlink
        or not a directory. ``fresh``: walked from DEST, whatever is held."""
        held = None if fresh else self._held
        start, fd = 0, self.root_fd
        if held is not None:
            for n in range(len(parts), 0, -1):
                got = held.get(tuple(parts[:n]))
                if got is not None:
                    start, fd = n, got
                    break
        else:
            fd = os.dup(self.root_fd)
        try:
            for i in range(start, len(parts)):
                name = parts[i]
                try:
                    nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(name, mode, dir_fd=fd)
                        self.dirs["/".join(parts[:i])] = None  # its entry is in the parent
                    except FileExistsError:
                        pass  # made meanwhile: opened below like any other
                    nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise EntryError(_why(_in_the_way(exc, name, fd),
                                          "/".join(parts[:i + 1]))) from None
                if held is not None:
                    held[tuple(parts[:i + 1])] = nfd
                    self._kept.add(nfd)
                else:
                    os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            if held is None:
                os.close(fd)
            raise

    def parent(self, path: str, create: bool = True) -> tuple[int, str, list[str]]:
        """``(descriptor of the parent directory, last component, parent's components)``."""
        parts = split_path(path)
        try:
            return self.open_dir(parts[:-1], create), parts[-1], parts[:-1]
        except FileNotFoundError as exc:
            raise Missing(_why(exc, "/".join(parts[:-1]))) from None

    def placed(self, fd: int, parts: list[str]) -> None:
        """An entry went into directory ``parts`` (``fd``): EntryError unless it is still at
        its path, now or, while held, at :meth:`release`."""
        if self._held is None:
            self.still_there(fd, parts)
        else:
            self._placed.setdefault(tuple(parts), fd)

    def still_there(self, fd: int, parts: list[str]) -> None:
        """EntryError unless directory ``parts`` is still the one ``fd`` refers to."""
        mine = os.fstat(fd)
        try:
            again = self.open_dir(parts, create=False, fresh=True)
        except (EntryError, OSError) as exc:
            raise EntryError(f"the directory {'/'.join(parts)!r} was replaced while the entry "
                             f"was placed ({exc})") from None
        try:
            now = os.fstat(again)
        finally:
            os.close(again)
        if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
            raise EntryError(f"the directory {'/'.join(parts)!r} was replaced while the entry "
                             "was placed")

    def fsync_file(self, path: str) -> None:
        pfd, name, _ = self.parent(path, create=False)
        try:
            fd = os.open(name, _FILE_READ, dir_fd=pfd)
        finally:
            self.close(pfd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def fsync_dir(self, entry: dict[str, Any]) -> None:
        fd = self.open_dir(split_path(entry["path"]), create=False)
        try:
            os.fsync(fd)
        finally:
            self.close(fd)


def _set_times(entry: dict[str, Any], fd: int | None = None, name: str | None = None,
               dir_fd: int | None = None) -> None:
    mtime = entry.get("mtime_ns")
    if mtime is None:
        return
    times = (int(entry.get("atime_ns", mtime)), int(mtime))
    if fd is not None:
        os.utime(fd, ns=times)
    else:
        os.utime(name, ns=times, dir_fd=dir_fd, follow_symlinks=False)  # type: ignore[arg-type]


def each(entries: list[Any], step: Any) -> list[dict[str, Any]]:
    """A record per entry of a per-entry operation; EntryError/OSError become failed records."""
    records = []
    for entry in entries:
        path = entry if isinstance(entry, str) else entry.get("path")
        try:
            extra = step(entry) or {}
            records.append({"path": path, "ok": True, **extra})
        except EntryError as exc:
            records.append({"path": path, "ok": False, "error": str(exc), **exc.extra})
        except OSError as exc:
            records.append({"path": path, "ok": False, "error": _why(exc, str(path))})
    return records


class Agent:
    """Carries out requests on a :class:`Tree`; ``handle`` gives the reply header."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.open_writes: dict[str, int] = {}
        self.failed_writes: dict[str, str] = {}
        # Temporaries this agent wrote, by name: their identity when written, checked when
        # placed (the ctime too: a file made after ours was unlinked may get its inode number).
        self.created: dict[str, tuple[int, int, int]] = {}

    def _written(self, path: str, fd: int) -> int:
        """Remember ``fd`` as the file written at ``path``; its size."""
        st = os.fstat(fd)
        self.created[path] = (st.st_dev, st.st_ino, st.st_ctime_ns)
        return st.st_size

    def mkdir(self, entry: dict[str, Any]) -> None:
        parts = split_path(entry["path"])
        fd = self.tree.open_dir(parts, create=True, mode=int(entry.get("mode", 0o755)))
        self.tree.close(fd)

    def _create(self, path: str) -> int:
        """A new regular file at ``path`` (a temporary name), created by us: whatever stood
        there (a file, a link, a FIFO) is unlinked and the file made with ``O_EXCL``."""
        pfd, name, _ = self.tree.parent(path)
        try:
            return _create_at(pfd, name, path)
        finally:
            self.tree.close(pfd)

    def write(self, header: dict[str, Any], data: bytes) -> dict[str, Any]:
        path = header["path"]
        if header.get("first"):
            self.failed_writes.pop(path, None)
            old = self.open_writes.pop(path, None)
            if old is not None:
                os.close(old)
            try:
                self.open_writes[path] = self._create(path)
            except (EntryError, OSError) as exc:
                self.failed_writes[path] = str(exc)
        if path in self.failed_writes:
            return {"ok": False, "error": self.failed_writes[path]}
        fd = self.open_writes.get(path)
        if fd is None:
            return {"ok": False, "error": f"{path!r}: no write in progress (first frame missing)"}
        try:
            _write_all(fd, data)
        except OSError as exc:
            os.close(self.open_writes.pop(path))
            self.failed_writes[path] = _why(exc, path)
            return {"ok": False, "error": self.failed_writes[path]}
        if header.get("last"):
            size = self._written(path, fd)
            os.close(self.open_writes.pop(path))
            return {"ok": True, "size": size}
        return {"ok": True}

    def files(self, header: dict[str, Any], data: bytes) -> list[dict[str, Any]]:
        view = memoryview(data)
        offset = 0
        records = []
        for entry in header["entries"]:
            size = int(entry["size"])
            chunk, offset = view[offset:offset + size], offset + size
            record = each([entry], lambda e, c=chunk: self._one_file(e, c))[0]
            record["path"] = entry.get("final") or entry["path"]
            records.append(record)
        return records

    def _one_file(self, entry: dict[str, Any], chunk: memoryview) -> dict[str, Any]:
        want = wanted_sha256(entry)
        if len(chunk) != int(entry["size"]):
            raise _check_failed(f"{entry['path']!r}: {len(chunk)} bytes arrived, not "
                                f"{entry['size']}")
        if entry.get("final"):
            return _write_placed(self.tree, entry, chunk, want)
        fd = self._create(entry["path"])
        try:
            _write_all(fd, chunk)
            self._written(entry["path"], fd)
            if want is not None:
                _check_sha256(fd, want, entry["path"])  # the bytes on disk, read back
        finally:
            os.close(fd)
        return {"size": len(chunk), **({} if want is None else {"sha256": want})}

    def _discard(self, path: str, ident: tuple[int, int, int] | None) -> None:
        """Unlink the temporary ``path`` this agent wrote (``ident``: its identity), reached
        through descriptors; nothing else at that name is touched. Best effort."""
        try:
            pfd, name, _ = self.tree.parent(path, create=False)
        except (EntryError, OSError):
            return
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if ident is None or (st.st_dev, st.st_ino) == ident[:2]:
                os.unlink(name, dir_fd=pfd)
        except OSError:
            pass
        finally:
            self.tree.close(pfd)

    def place(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Check the temporary's size and content, give it its mode and times, rename it to
        ``path``."""
        want = wanted_sha256(entry)
        tree = self.tree
        spfd, sname, _ = tree.parent(entry["tmp"], create=False)
        try:
            dpfd, dname, dparts = tree.parent(entry["path"], create=True)
            try:
                try:
                    fd = os.open(sname, _FILE_READ, dir_fd=spfd)
                except OSError as exc:
                    raise EntryError(_why(exc, entry["tmp"])) from None
                try:
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode):
                        raise EntryError(f"{entry['tmp']!r} is not a regular file")
                    made = self.created.pop(entry["tmp"], None)
                    if made is not None and made != (st.st_dev, st.st_ino, st.st_ctime_ns):
                        raise EntryError(f"{entry['tmp']!r} is not the file this agent wrote "
                                         "(replaced meanwhile)")
                    if "size" in entry and st.st_size != int(entry["size"]):
                        raise _check_failed(f"{entry['tmp']!r} has {st.st_size} bytes, not "
                                            f"{entry['size']}")
                    if want is not None:
                        _check_sha256(fd, want, entry["tmp"])
                    if "mode" in entry:
                        os.fchmod(fd, int(entry["mode"]) & 0o7777)
                    _set_times(entry, fd=fd)
                    os.rename(sname, dname, src_dir_fd=spfd, dst_dir_fd=dpfd)
                    placed = os.stat(dname, dir_fd=dpfd, follow_symlinks=False)
                    if (placed.st_dev, placed.st_ino) != (st.st_dev, st.st_ino):
                        raise EntryError(f"{entry['path']!r} changed while it was placed")
                    tree.placed(dpfd, dparts)
                    tree.written[entry["path"]] = None
                    tree.dirs["/".join(dparts)] = None
                    done: dict[str, Any] = {"size": placed.st_size,
                                            "mode": stat.S_IMODE(placed.st_mode),
                                            "mtime_ns": placed.st_mtime_ns}
                    if want is not None:
                        done["sha256"] = want
                    return done
                finally:
                    os.close(fd)
            finally:
                self.tree.close(dpfd)
        finally:
            self.tree.close(spfd)

    def symlink(self, entry: dict[str, Any]) -> None:
        pfd, name, parts = self.tree.parent(entry["path"])
        try:
            tmp = entry.get("tmp") or f".memoh-link-{os.getpid()}-{name}"
            if "/" in tmp:
                raise EntryError(f"bad temporary name {tmp!r}")
            try:  # noqa: SIM105
                os.unlink(tmp, dir_fd=pfd)
            except FileNotFoundError:
                pass
            os.symlink(entry["target"], tmp, dir_fd=pfd)
            try:
                _set_times(entry, name=tmp, dir_fd=pfd)
                os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
            except OSError:
                try:  # noqa: SIM105 (our temporary link is not left behind)
                    os.unlink(tmp, dir_fd=pfd)
                except OSError:
                    pass
                raise
            self.tree.placed(pfd, parts)
            self.tree.dirs["/".join(parts)] = None
        finally:
            self.tree.close(pfd)

    def meta(self, entry: dict[str, Any]) -> None:
        pfd, name, parts = self.tree.parent(entry["path"], create=False)
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                _set_times(entry, name=name, dir_fd=pfd)
                self.tree.dirs["/".join(parts)] = None
                return
            flags = _FILE_READ
            if stat.S_ISDIR(st.st_mode):
                flags |= os.O_DIRECTORY
                self.tree.dirs[entry["path"]] = None  # its own inode changed
            else:
                self.tree.written[entry["path"]] = None
            fd = os.open(name, flags, dir_fd=pfd)
            try:
                if stat.S_IFMT(os.fstat(fd).st_mode) != stat.S_IFMT(st.st_mode):
                    raise EntryError(f"{entry['path']!r} changed while its metadata was set")
                if "mode" in entry:
                    os.fchmod(fd, int(entry["mode"]) & 0o7777)
                _set_times(entry, fd=fd)
            finally:
                os.close(fd)
        finally:
            self.tree.close(pfd)

    def delete(self, path: str) -> dict[str, Any] | None:
        pfd, name, _ = self.tree.parent(path, create=False)
        try:
            os.unlink(name, dir_fd=pfd)
        except FileNotFoundError:
            return {"absent": True}
        except IsADirectoryError:
            raise EntryError(f"{path!r} is a directory (never deleted)") from None
        finally:
            self.tree.close(pfd)
        return None

    def hash(self, path: str) -> dict[str, Any]:
        """``sha256`` and ``size`` of the regular file at ``path``; a symlink, FIFO, directory
        or device is refused without being followed or opened, a missing path is ``absent``."""
        try:
            pfd, name, _ = self.tree.parent(path, create=False)
        except Missing as exc:
            raise EntryError(str(exc), absent=True) from None
        try:
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                raise EntryError(f"{path!r} does not exist", absent=True) from None
            if not stat.S_ISREG(st.st_mode):
                raise EntryError(f"{path!r} is not a regular file ({_kind(st.st_mode)}): "
                                 "not hashed")
            fd = os.open(name, _FILE_READ, dir_fd=pfd)
        except FileNotFoundError:
            raise EntryError(f"{path!r} does not exist", absent=True) from None
        except OSError as exc:
            raise EntryError(_why(exc, path)) from None
        finally:
            self.tree.close(pfd)
        try:
            now = os.fstat(fd)
            same = (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
            if not (same and stat.S_ISREG(now.st_mode)):
                raise EntryError(f"{path!r} changed while it was opened: not hashed")
            digest, size = _sha256(fd)
        finally:
            os.close(fd)
        return {"sha256": digest, "size": size}

    def flush(self, how: str) -> dict[str, Any]:
        if how == "syncfs" and _syncfs(self.tree.root_fd):
            return {"ok": True, "how": "syncfs"}
        records = each(list(self.tree.written), self.tree.fsync_file)
        dirs = each([{"path": d} for d in self.tree.dirs if d], self.tree.fsync_dir)
        os.fsync(self.tree.root_fd)
        failed = [r for r in records + dirs if not r["ok"]]
        return {"ok": not failed, "how": "fsync", "files": len(records), "dirs": len(dirs) + 1,
                "records": failed}

    def _per_entry(self, op: str, header: dict[str, Any], data: bytes) -> list[dict[str, Any]]:
        """The records of a per-entry request, its directories held while it runs; an entry
        placed in a directory no longer at its path by the end fails."""
        self.tree.hold()
        try:
            if op == "files":
                records = self.files(header, data)
            else:
                entries = header.get("paths" if op in ("delete", "hash") else "entries", [])
                records = each(entries, getattr(self, op))
        finally:
            replaced = self.tree.release()
        for record in records:
            where = str(record["path"]).rpartition("/")[0]
            if record["ok"] and where in replaced:
                record.update(ok=False, error=f"the directory {where!r} was replaced while the "
                              "entry was placed")
        return records

    def handle(self, header: dict[str, Any], data: bytes) -> dict[str, Any]:
        op = header.get("op")
        reply: dict[str, Any]
        if op == "write":
            reply = self.write(header, data)
        elif op == "flush":
            reply = self.flush(str(header.get("how", "syncfs")))
        elif op in ("files", "mkdir", "place", "symlink", "meta", "delete", "hash"):
            reply = {"records": self._per_entry(op, header, data)}
        else:
            reply = {"ok": False, "error": f"unknown operation {op!r}"}
        if "records" in reply and "ok" not in reply:
            reply["ok"] = all(r["ok"] for r in reply["records"])
        reply.update(op=op, id=header.get("id"))
        return reply


def _write_placed(tree: Tree, entry: dict[str, Any], chunk: memoryview,
                  want: str | None) -> dict[str, Any]:
    """A ``files`` entry with ``final``: ``chunk`` written to the temporary ``path`` (a new
    file), checked (``want``: its sha256, read back through the descriptor), given its mode and
    times and renamed to ``final``, all through the one descriptor this agent created; the
    temporary is not left behind when anything fails."""
    tmp, final = entry["path"], entry["final"]
    spfd, sname, _ = tree.parent(tmp)
    try:
        dpfd, dname, dparts = tree.parent(final)
        try:
            fd = _create_at(spfd, sname, tmp)
            try:
                mine = os.fstat(fd)
                try:
                    _write_all(fd, chunk)
                    if want is not None:
                        _check_sha256(fd, want, tmp)
                    if "mode" in entry:
                        os.fchmod(fd, int(entry["mode"]) & 0o7777)
                    _set_times(entry, fd=fd)
                    os.rename(sname, dname, src_dir_fd=spfd, dst_dir_fd=dpfd)
                except BaseException:
                    _unlink_if(spfd, sname, mine)
                    raise
                placed = os.stat(dname, dir_fd=dpfd, follow_symlinks=False)
            finally:
                os.close(fd)
            if (placed.st_dev, placed.st_ino) != (mine.st_dev, mine.st_ino):
                raise EntryError(f"{final!r} changed while it was placed")
            tree.placed(dpfd, dparts)
            tree.written[final] = None
            tree.dirs["/".join(dparts)] = None
            done: dict[str, Any] = {"size": placed.st_size, "mode": stat.S_IMODE(placed.st_mode),
                                    "mtime_ns": placed.st_mtime_ns}
            if want is not None:
                done["sha256"] = want
            return done
        finally:
            tree.close(dpfd)
    finally:
        tree.close(spfd)


def _unlink_if(pfd: int, name: str, mine: os.stat_result) -> None:
    """Unlink ``name`` in ``pfd`` if it is still the file ``mine`` (best effort)."""
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            os.unlink(name, dir_fd=pfd)
    except OSError:
        pass


def _create_at(pfd: int, name: str, path: str) -> int:
    """A new regular file ``name`` in directory ``pfd`` (``path``: for errors), made with
    ``O_EXCL`` and never through a link; whatever stood at that name is unlinked first."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            return os.open(name, flags, 0o600, dir_fd=pfd)
        except FileExistsError:
            pass
        try:
            os.unlink(name, dir_fd=pfd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            raise EntryError(f"{path!r} is a directory") from None
        return os.open(name, flags, 0o600, dir_fd=pfd)
    except OSError as exc:
        raise EntryError(_why(exc, path)) from None


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISLNK, "a symlink, not followed"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return f"type {stat.S_IFMT(mode):o}"


def wanted_sha256(entry: dict[str, Any]) -> str | None:
    """The entry's ``sha256`` (None without one); EntryError unless 64 lowercase hex digits."""
    want = entry.get("sha256")
    if want is not None and not (isinstance(want, str) and len(want) == 64
                                 and _HEX.issuperset(want)):
        raise EntryError(f"bad sha256 {want!r}: must be 64 lowercase hex digits")
    return want


def _sha256(fd: int) -> tuple[str, int]:
    """``(sha256 hex, bytes)`` of the file ``fd`` refers to, read from its start with
    ``pread`` (the descriptor's offset is left alone)."""
    import hashlib  # only when a hash is asked for: the agent starts without it

    digest = hashlib.sha256()
    offset = 0
    while True:
        data = os.pread(fd, _READ_CHUNK, offset)
        if not data:
            return digest.hexdigest(), offset
        digest.update(data)
        offset += len(data)


def _check_sha256(fd: int, want: str, path: str) -> None:
    got, _ = _sha256(fd)
    if got != want:
        raise _check_failed(f"{path!r} has sha256 {got}, not {want}")


def _syncfs(fd: int) -> bool:
    """``syncfs(2)`` of ``fd``'s file system through libc (ctypes); False where it cannot."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.syncfs(fd) == 0)
    except (ImportError, OSError, AttributeError):
        return False


def serve(dest: str, stdin: int = 0, stdout: int = 1) -> int:
    """The agent's loop: the handshake, then one reply per request until ``bye`` or EOF."""
    decoder = FrameDecoder(decode_request)

    def send(header: dict[str, Any]) -> None:
        _write_all(stdout, encode_reply(header))

    def frames() -> Any:
        while True:
            try:
                frame = decoder.next()
            except FrameError as exc:
                sys.stderr.write(f"memoh-trio agent: {exc}\n")
                raise SystemExit(EXIT_PROTOCOL) from None
            if frame is not None:
                yield frame
                continue
            data = os.read(stdin, _READ_CHUNK)
            if not data:
                if decoder.buffered:
                    sys.stderr.write("memoh-trio agent: the stream ended inside a frame\n")
                    raise SystemExit(EXIT_PROTOCOL)
                return
            decoder.feed(data)

    it = frames()
    first = next(it, None)
    if first is None:
        return EXIT_PROTOCOL
    hello = first[0]
    if hello.get("op") != "hello" or hello.get("version") != PROTOCOL_VERSION:
        send({"op": "hello", "id": hello.get("id"), "ok": False, "version": PROTOCOL_VERSION,
              "error": f"the agent speaks protocol version {PROTOCOL_VERSION}, the client "
                       f"{hello.get('version')!r}"})
        return EXIT_VERSION
    try:
        parts = split_path(dest) if dest not in ("", ".") else []
        root = Tree(os.open(".", _DIR_FLAGS)).open_dir(parts, create=True)
    except (EntryError, OSError) as exc:
        send({"op": "hello", "id": hello.get("id"), "ok": False, "version": PROTOCOL_VERSION,
              "error": f"cannot open the destination {dest!r}: {exc}"})
        return EXIT_DEST
    agent = Agent(Tree(root))
    send({"op": "hello", "id": hello.get("id"), "ok": True, "version": PROTOCOL_VERSION,
          "pid": os.getpid(), "python": sys.version.split()[0]})
    for header, data in it:
        if header.get("op") == "bye":
            send({"op": "bye", "id": header.get("id"), "ok": True})
            return EXIT_OK
        send(agent.handle(header, data))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1] if len(sys.argv) > 1 else ""))
