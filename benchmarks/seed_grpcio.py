"""The seed's migration algorithm on grpcio: Memoh's Go loop, transcribed.

``migrateBindMountData`` (internal/mcp/migrate.go) walks the bot directory and, for each regular
file, one at a time, calls ``mcpclient.Client.WriteRaw`` (internal/mcp/mcpclient/client.go):
a client stream fed from a 64 KiB buffer, ``path`` set on the first chunk only, then
``CloseAndRecv``. Directories are skipped (created implicitly by the server). A failed file is
counted and the walk goes on; only with no failure is the source renamed to ``<src>.migrated``.

This is the baseline the targets are measured against, so it stays faithful: no concurrency,
no larger chunks, no pipelining.

    python -m benchmarks.seed_grpcio --target 127.0.0.1:PORT --src DATA_ROOT/bots/BOT
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import grpc

from benchmarks._measure import Meter
from benchmarks.grpcio_peer import load_stubs

CHUNK = 64 * 1024  # buf := make([]byte, 64*1024)
MIGRATED_SUFFIX = ".migrated"


def _chunks(pb2: ModuleType, f: Any, path: str) -> Iterator[Any]:
    first = True
    while True:
        data = f.read(CHUNK)
        if not data:  # io.EOF
            return
        chunk = pb2.WriteRawChunk(data=data)
        if first:
            chunk.path = path
            first = False
        yield chunk


def copy_file_to_container(stub: Any, pb2: ModuleType, host_path: str, rel: str) -> int:
    with open(host_path, "rb", buffering=0) as f:  # os.Open: unbuffered reads of up to 64 KiB
        resp = stub.WriteRaw(_chunks(pb2, f, rel.replace(os.sep, "/")))
    return int(resp.bytes_written)


def migrate(stub: Any, pb2: ModuleType, src: str) -> tuple[int, int, int]:
    """Returns (migrated, failed, bytes)."""
    migrated = failed = nbytes = 0

    def on_error(err: OSError) -> None:  # walkErr: the subtree is lost, so count a failure
        nonlocal failed
        print(f"migrate: walk error: {err}", file=sys.stderr)
        failed += 1

    for dirpath, dirnames, filenames in os.walk(src, onerror=on_error):
        dirnames.sort()  # filepath.WalkDir walks in lexical order
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                nbytes += copy_file_to_container(stub, pb2, path, os.path.relpath(path, src))
            except (OSError, grpc.RpcError) as exc:
                print(f"migrate: copy failed: {path}: {exc}", file=sys.stderr)
                failed += 1
                continue
            migrated += 1
    return migrated, failed, nbytes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", required=True)
    ap.add_argument("--src", required=True)
    args = ap.parse_args(argv)
    pb2, pb2_grpc = load_stubs()
    src = os.path.abspath(args.src)
    with Meter() as meter:
        with grpc.insecure_channel(args.target) as channel:
            stub = pb2_grpc.ContainerServiceStub(channel)
            migrated, failed, nbytes = migrate(stub, pb2, src)
        renamed = False
        if failed == 0:
            os.rename(src, src + MIGRATED_SUFFIX)
            renamed = True
    meter.emit(files=migrated, bytes=nbytes, failed=failed, renamed=renamed)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
