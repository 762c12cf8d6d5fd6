"""The physical limit: the same files over one raw TCP connection on loopback, no RPC at all.

The sender walks the tree and streams ``header | path | content`` for every file back to back
(small files batched into large writes, large ones with ``socket.sendfile``: zero copy); the
receiver writes each file under its root, moving large contents socket -> file with ``splice``.
No per-file round trip: one acknowledgement at the end, after the receiver has closed the last
file. What gRPC adds on top of this is the cost of RPC.

    python -m benchmarks.raw_tcp serve --root DIR        # prints "listening on HOST:PORT"
    python -m benchmarks.raw_tcp send --target HOST:PORT --src DIR
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import BinaryIO, cast

from benchmarks._measure import Meter, split_target

HEADER = struct.Struct("!HQ")  # path length (0 ends the stream), content length
SMALL = 256 * 1024  # files up to this size are read and batched into the send buffer
BATCH = 1024 * 1024  # flush the batch once it holds this much
RECV_BUF = 1024 * 1024
PIPE_SIZE = 1024 * 1024  # splice(2) pipe capacity
ACK = struct.Struct("!QQ")  # files, bytes received


def _tcp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send(target: str, src: str) -> tuple[int, int]:
    host, port = split_target(target)
    files = nbytes = 0
    with _tcp_socket() as sock:
        sock.connect((host, port))
        batch = bytearray()
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, src).replace(os.sep, "/").encode()
                with open(path, "rb", buffering=0) as f:
                    size = os.fstat(f.fileno()).st_size
                    batch += HEADER.pack(len(rel), size) + rel
                    if size <= SMALL:
                        data = f.read()
                        if len(data) != size:
                            raise OSError(f"{path} changed size while being read")
                        batch += data
                        if len(batch) >= BATCH:
                            sock.sendall(batch)
                            batch.clear()
                    else:
                        sock.sendall(batch)
                        batch.clear()
                        sent = sock.sendfile(f, 0, size)
                        if sent != size:
                            raise OSError(f"{path}: sent {sent} of {size} bytes")
                files += 1
                nbytes += size
        batch += HEADER.pack(0, 0)
        sock.sendall(batch)
        ack = _read_exact(cast(BinaryIO, sock.makefile("rb")), ACK.size)
        got_files, got_bytes = ACK.unpack(ack)
        if (got_files, got_bytes) != (files, nbytes):
            raise OSError(f"receiver got {got_files} files/{got_bytes} B, sent {files}/{nbytes}")
    return files, nbytes


def _read_exact(r: BinaryIO, n: int) -> bytes:
    data = r.read(n)
    if len(data) != n:
        raise EOFError(f"connection closed: wanted {n} bytes, got {len(data)}")
    return data


class _Reader:
    """Buffered reads for headers and small files; large contents bypass the buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0

    def exact(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n:
            if self.pos:
                del self.buf[: self.pos]
                self.pos = 0
            data = self.sock.recv(RECV_BUF)
            if not data:
                raise EOFError("connection closed mid-stream")
            self.buf += data
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def buffered(self, limit: int) -> bytes:
        """Up to ``limit`` bytes already received, without reading the socket."""
        n = min(limit, len(self.buf) - self.pos)
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out


def _splice_to(sock: socket.socket, out: int, size: int, pipe: tuple[int, int]) -> None:
    """Move ``size`` bytes from the socket to a file with ``splice(2)``: no copy through Python."""
    left = size
    while left:
        n = os.splice(sock.fileno(), pipe[1], min(left, PIPE_SIZE))
        if not n:
            raise EOFError("connection closed mid-file")
        left -= n
        while n:
            n -= os.splice(pipe[0], out, n)


def receive(conn: socket.socket, root: Path) -> None:
    files = nbytes = 0
    made: set[str] = set()
    r = _Reader(conn)
    pipe = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(pipe[1], fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    try:
        while True:
            plen, size = HEADER.unpack(r.exact(HEADER.size))
            if plen == 0:
                break
            rel = r.exact(plen).decode()
            if rel.startswith("/") or ".." in rel.split("/"):
                raise ValueError(f"refusing path outside the root: {rel!r}")
            dest = os.path.join(root, rel)
            parent = os.path.dirname(dest)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            with open(dest, "wb", buffering=0) as out:
                if size <= SMALL:
                    out.write(r.exact(size))
                else:
                    head = r.buffered(size)
                    out.write(head)
                    _splice_to(conn, out.fileno(), size - len(head), pipe)
            files += 1
            nbytes += size
        conn.sendall(ACK.pack(files, nbytes))
    finally:
        os.close(pipe[0])
        os.close(pipe[1])
        conn.close()


def serve(root: Path) -> None:
    with _tcp_socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        host, port = lsock.getsockname()[:2]
        print(f"listening on {host}:{port}", flush=True)
        while True:
            conn, _ = lsock.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            receive(conn, root)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--root", required=True, type=Path)
    p = sub.add_parser("send")
    p.add_argument("--target", required=True)
    p.add_argument("--src", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        serve(args.root)
        return 0
    with Meter() as meter:
        files, nbytes = send(args.target, os.path.abspath(args.src))
    meter.emit(files=files, bytes=nbytes, renamed=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
