"""WriteRaw throughput vs chunk size (how DEFAULT_CHUNK_SIZE was chosen).

    .venv/bin/python -m benchmarks.bench_chunk_size [--size-mib 256] [--server grpcio|trio|go]
        [--source bytes|file] [--repeat 2] [--chunks-kib 64,256,1024,2048,3072]

Streams one file of ``--size-mib`` to a server on 127.0.0.1 for each chunk size and prints MiB/s
(best of ``--repeat``) and, for ``--server go`` (Memoh's Go server, a child process), the
server's CPU seconds per run. The server's root is a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path

import trio

from benchmarks.grpcio_peer import start_grpcio_server
from benchmarks.run import LISTEN_TIMEOUT, MEMOH_GO_SERVER, proc_times
from memoh_trio import connect

MiB = 1024 * 1024


async def run(args: argparse.Namespace) -> None:
    size = args.size_mib * MiB
    chunks = [int(c) * 1024 for c in args.chunks_kib.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        src = Path(tmp) / "src.bin"
        block = os.urandom(MiB)
        payload = block * args.size_mib
        if args.source == "file":
            src.write_bytes(payload)
        go: trio.Process | None = None
        async with trio.open_nursery() as nursery:
            if args.server == "grpcio":
                server, port = start_grpcio_server(root)
                target = f"127.0.0.1:{port}"
            elif args.server == "go":
                go = await trio.lowlevel.open_process(
                    [str(MEMOH_GO_SERVER), "--root", str(root), "--listen", "127.0.0.1:0"],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                assert go.stdout is not None
                with trio.fail_after(LISTEN_TIMEOUT):
                    line = await go.stdout.receive_some(4096)
                target = line.decode().split()[2]
            else:
                from memoh_trio import serve

                addr = await nursery.start(partial(serve, root, durable=False,
                                                              allow_unauthenticated=True))
                target = str(addr)
            try:
                async with connect(target) as client:
                    print(f"server={args.server} source={args.source} size={args.size_mib} MiB")
                    for chunk in chunks:
                        best = 0.0
                        cpu: list[float] = []
                        for _ in range(args.repeat):
                            cpu0 = sum(proc_times(go.pid)[:2]) if go is not None else 0.0
                            source: bytes | Path = src if args.source == "file" else payload
                            t0 = time.perf_counter()
                            res = await client.write_raw("bench.bin", source, chunk_size=chunk)
                            dt = time.perf_counter() - t0
                            assert res.bytes_written == size
                            best = max(best, size / MiB / dt)
                            if go is not None:
                                cpu.append(sum(proc_times(go.pid)[:2]) - cpu0)
                            (root / "bench.bin").unlink()
                        server_cpu = (f"  server CPU {', '.join(f'{c:.2f}' for c in cpu)} s"
                                      if cpu else "")
                        print(f"chunk {chunk // 1024:>5} KiB: {best:7.1f} MiB/s{server_cpu}",
                              flush=True)
            finally:
                if args.server == "grpcio":
                    server.stop(None)
                if go is not None:
                    go.terminate()
                    await go.wait()
                nursery.cancel_scope.cancel()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--server", choices=["grpcio", "trio", "go"], default="grpcio")
    p.add_argument("--source", choices=["bytes", "file"], default="bytes")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--chunks-kib", default="64,256,1024,2048,3072")
    trio.run(run, p.parse_args())


if __name__ == "__main__":
    main()
