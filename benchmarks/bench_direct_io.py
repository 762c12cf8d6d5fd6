"""Writing an upload through the page cache vs with O_DIRECT (why the server writes large uploads
with ``O_DIRECT``; see ``memoh_trio._fs.RawWriter``).

    .venv/bin/python -m benchmarks.bench_direct_io [--size-mib 256] [--rounds 5] [--dir DIR]

Writes ``--size-mib`` in 1 MiB chunks through ``RawWriter`` (the server's upload sink: each chunk
a fresh ``bytes``, as received) with ``direct=False`` and ``direct=True`` in turn, then
``fdatasync``s and commits; prints the seconds to write, the seconds including the flush, and the
kernel CPU seconds of each, then the medians. ``--dir`` is where the files go (default: a
temporary directory under the cache dir, i.e. on the disk, not on tmpfs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from memoh_trio import _fs

MiB = 1024 * 1024


def one(root_fd: int, size_mib: int, direct: bool, block: bytes) -> tuple[float, float, float]:
    os.sync()
    t0 = time.perf_counter()
    c0 = os.times()
    w = _fs.RawWriter(root_fd, "bench.bin", direct=direct)
    try:
        for _ in range(size_mib):
            w.write(bytes(block))  # a fresh object per chunk, like a received message
        t_write = time.perf_counter() - t0
        os.fdatasync(w._fd)
        w.commit()
    finally:
        w.discard()
    c1 = os.times()
    return t_write, time.perf_counter() - t0, c1.system - c0.system


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", type=Path,
                    default=Path(os.environ.get("MEMOH_BENCH_CACHE",
                                                Path.home() / ".cache" / "memoh-trio-bench")))
    args = ap.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    block = os.urandom(MiB)
    totals: dict[str, list[float]] = {"page cache": [], "O_DIRECT": []}
    with tempfile.TemporaryDirectory(prefix="direct-io-", dir=args.dir) as tmp:
        root_fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in range(args.rounds):
                for name, direct in (("page cache", False), ("O_DIRECT", True)):
                    t_write, total, system = one(root_fd, args.size_mib, direct, block)
                    totals[name].append(total)
                    print(f"{name:<11} write {t_write:6.3f} s  with fdatasync {total:6.3f} s  "
                          f"kernel CPU {system:5.2f} s", flush=True)
        finally:
            os.close(root_fd)
    for name, values in totals.items():
        print(f"{name:<11} median with fdatasync {statistics.median(values):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
