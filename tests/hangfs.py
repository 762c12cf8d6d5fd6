"""A hung filesystem for tests: a tiny FUSE filesystem speaking ``/dev/fuse`` directly (no
libfuse), with one regular file whose READ requests are never answered, as on a dead NFS server.
A thread that reads it blocks in the kernel until the thread gets a signal (a fatal one, at
process exit, ends the read with EINTR, as NFS's killable waits do) or the filesystem is closed.

Needs root (``mount``) and ``/dev/fuse``: :func:`HangFS` raises OSError otherwise.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import struct
import threading
import time

IN_HDR = struct.Struct("<IIQQIIII")  # len, opcode, unique, nodeid, uid, gid, pid, padding
OUT_HDR = struct.Struct("<IiQ")
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # 88 bytes
LOOKUP, FORGET, GETATTR, OPEN, READ, RELEASE, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR = (
    1, 2, 3, 14, 15, 18, 25, 26, 27, 28, 29)
INTERRUPT, BATCH_FORGET, DESTROY = 36, 42, 38


class HangFS:
    """Mount at ``mountpoint`` a directory holding ``name`` (``size`` bytes, never readable)."""

    def __init__(self, mountpoint: str, name: str, size: int) -> None:
        self.mountpoint, self.name, self.size = mountpoint, name.encode(), size
        self.now = int(time.time())
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        libc = ctypes.CDLL(None, use_errno=True)
        opts = f"fd={self.fd},rootmode=40000,user_id=0,group_id=0".encode()
        if libc.mount(b"hangfs", mountpoint.encode(), b"fuse", 0, opts) != 0:
            e = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(e, os.strerror(e))
        self.reads = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def attr(self, node: int) -> bytes:
        if node == 1:
            return ATTR.pack(1, 0, 0, self.now, self.now, self.now, 0, 0, 0,
                             stat.S_IFDIR | 0o755, 2, 0, 0, 0, 4096, 0)
        return ATTR.pack(2, self.size, (self.size + 511) // 512, self.now, self.now, self.now,
                         0, 0, 0, stat.S_IFREG | 0o644, 1, 0, 0, 0, 4096, 0)

    def reply(self, unique: int, body: bytes = b"", error: int = 0) -> None:
        with_body = b"" if error else body
        with contextlib.suppress(OSError):
            os.write(self.fd, OUT_HDR.pack(OUT_HDR.size + len(with_body), -error, unique)
                     + with_body)

    def _serve(self) -> None:
        while True:
            try:
                req = os.read(self.fd, 1 << 20 | 4096)
            except OSError as exc:
                if exc.errno in (errno.ENODEV, errno.EBADF):
                    return
                if exc.errno == errno.EINTR or exc.errno == errno.ENOENT:
                    continue
                return
            _len, op, unique, node, *_ = IN_HDR.unpack_from(req)
            body = req[IN_HDR.size:]
            if op == INIT:
                _major, minor, readahead, _flags = struct.unpack_from("<IIII", body)
                out = struct.pack("<IIIIHHII", 7, min(minor, 31), readahead, 0, 16, 12,
                                  1 << 17, 1) + b"\0" * 36
                self.reply(unique, out)
            elif op == GETATTR:
                self.reply(unique, struct.pack("<QII", 0, 0, 0) + self.attr(node))
            elif op == LOOKUP:
                if node == 1 and body.rstrip(b"\0") == self.name:
                    self.reply(unique, struct.pack("<QQQQII", 2, 0, 0, 0, 0, 0) + self.attr(2))
                else:
                    self.reply(unique, error=errno.ENOENT)
            elif op in (OPEN, OPENDIR):
                self.reply(unique, struct.pack("<QII", 0, 0, 0))
            elif op == READDIR:
                offset = struct.unpack_from("<QQ", body)[1]
                if offset == 0:
                    ents = b""
                    for i, (ino, name, typ) in enumerate(((2, self.name, 8),)):
                        ent = struct.pack("<QQII", ino, i + 1, len(name), typ) + name
                        ents += ent + b"\0" * (-len(ent) % 8)
                    self.reply(unique, ents)
                else:
                    self.reply(unique, b"")
            elif op == READ:
                self.reads += 1  # never answered: a hung filesystem
            elif op in (RELEASE, RELEASEDIR, FLUSH):
                self.reply(unique)
            elif op == INTERRUPT:
                # A thread reading the file got a signal (at exit: SIGKILL). Answer its READ with
                # EINTR, as NFS lets a fatal signal end a hung read; without this the kernel
                # waits uninterruptibly for an answer and nothing, not even SIGKILL, ends the
                # reading process.
                (interrupted,) = struct.unpack_from("<Q", body)
                self.reply(interrupted, error=errno.EINTR)
            elif op in (FORGET, BATCH_FORGET):
                pass  # no reply expected
            elif op == DESTROY:
                return
            else:
                self.reply(unique, error=errno.ENOSYS)

    def close(self) -> None:
        """Unmount (lazily) and close the device: the kernel aborts every pending request."""
        libc = ctypes.CDLL(None, use_errno=True)
        libc.umount2(self.mountpoint.encode(), 2)  # MNT_DETACH
        os.close(self.fd)
