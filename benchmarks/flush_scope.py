"""What a flush writes out (issue 25): a global ``sync`` against ``sync -f`` of the destination.

    sudo python -m benchmarks.flush_scope [--other-mib 32] [--rounds 3]

Bytes, not times. Two small ext4 file systems on loop devices, in a private mount namespace
(``unshare -m``; the loop devices are released with their mounts): DEST, where a migration has
just written 100 files (4 MiB), and OTHER, holding ``--other-mib`` MiB of another writer's
dirty pages (another bot's migration, the host's own work). Then each flush as the container
would run it, in DEST: ``sync`` (what the migrator runs today, :data:`SYNC_COMMAND`),
:func:`memoh_trio._scripts.flush.flush_command` (``sync -f``: ``syncfs(2)`` of DEST alone) and the
agent's ``flush`` (``syncfs`` through libc), and
the sectors each device wrote during the flush (``/sys/block/loopN/stat``), per round.
Needs root, util-linux (``unshare``, ``mount -o loop``) and ``mkfs.ext4``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MiB = 1024 * 1024
SECTOR = 512


def _sectors_written(device: str) -> int:
    """Sectors written by a block device so far (field 7 of ``/sys/block/DEV/stat``)."""
    name = os.path.basename(device)
    return int(Path(f"/sys/block/{name}/stat").read_text().split()[6])


def _device_of(mountpoint: Path) -> str:
    return subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mountpoint)], check=True,
                          capture_output=True, text=True).stdout.strip()


def _mkfs(image: Path, mountpoint: Path, mib: int) -> str:
    with open(image, "wb") as f:
        f.truncate(mib * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mountpoint.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    return _device_of(mountpoint)


def _dirty(directory: Path, files: int, size: int, tag: str) -> None:
    block = os.urandom(size)
    for i in range(files):
        (directory / f"{tag}-{i:04d}").write_bytes(block[i % 7:] + block[:i % 7])


def inner(other_mib: int, rounds: int) -> int:
    from memoh_trio._scripts.flush import flush_command, parse_flush
    from memoh_trio._scripts.meta import SYNC_COMMAND

    agent = (f"{sys.executable} -c 'import os, sys; from memoh_trio._agent.agent import _syncfs; "
             "sys.exit(0 if _syncfs(os.open(\".\", os.O_RDONLY)) else 1)'")
    ways = {"sync (today)": SYNC_COMMAND, "sync -f DEST (flush_command)": flush_command(""),
            "the agent's flush (syncfs through libc)": agent}
    results: dict[str, list[tuple[int, int]]] = {w: [] for w in ways}
    with tempfile.TemporaryDirectory(prefix="flush-scope-") as tmp:
        top = Path(tmp)
        dest_dev = _mkfs(top / "dest.img", top / "dest", 64)
        other_dev = _mkfs(top / "other.img", top / "other", other_mib + 64)
        try:
            for r in range(rounds):
                for way, command in ways.items():
                    os.sync()  # untimed: nothing dirty left from the last trial
                    _dirty(top / "other", other_mib, MiB, f"o{r}")
                    _dirty(top / "dest", 100, 40 * 1024, f"d{r}")
                    before = _sectors_written(dest_dev), _sectors_written(other_dev)
                    done = subprocess.run(["/bin/sh", "-c", command], cwd=top / "dest",
                                          capture_output=True, check=False)
                    after = _sectors_written(dest_dev), _sectors_written(other_dev)
                    if command == flush_command(""):
                        flushed = parse_flush(done.returncode, done.stdout, done.stderr)
                        assert flushed.how == "syncfs", flushed
                    else:
                        assert done.returncode == 0, done
                    results[way].append(((after[0] - before[0]) * SECTOR,
                                         (after[1] - before[1]) * SECTOR))
                    for f in list((top / "other").iterdir()) + list((top / "dest").iterdir()):
                        if f.is_file():
                            f.unlink()
        finally:
            for mp in ("dest", "other"):
                subprocess.run(["umount", str(top / mp)], check=False)
    print(f"DEST: 100 files, 4.0 MiB just written; OTHER: {other_mib} MiB of another "
          f"writer's dirty pages; {rounds} round(s), medians (each round's figures in brackets)")
    print("| flush run in DEST | written to DEST MiB | written to OTHER MiB |")
    print("|---|---:|---:|")
    for way, rows in results.items():
        d = statistics.median(x for x, _ in rows) / MiB
        o = statistics.median(y for _, y in rows) / MiB
        each = ", ".join(f"{x / MiB:.1f}/{y / MiB:.1f}" for x, y in rows)
        print(f"| {way} | {d:.1f} | {o:.1f} [{each}] |")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--other-mib", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.inner:
        return inner(args.other_mib, args.rounds)
    if os.geteuid() != 0:
        print("flush_scope: error: needs root (loop devices and mounts); hint: run it as root",
              file=sys.stderr)
        return 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH", "")) if p)}
    return subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-m",
                           "benchmarks.flush_scope", "--inner", "--other-mib",
                           str(args.other_mib), "--rounds", str(args.rounds)],
                          cwd=REPO, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
