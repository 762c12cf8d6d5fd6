"""The server under exhaustion, end to end: out of descriptors (a flood of idle connections) and
out of memory (large messages from many calls at once). The server runs as a child process
(``memoh-trio serve``) with its limits set by util-linux ``prlimit``; the clients are real.

Issue 23, items 5 and 6.
"""

from __future__ import annotations

from pathlib import Path

import trio
from peers import TEST_TOKEN, memoh_trio_server

import memoh_trio

# --------------------------------------------------------------------------- memory

MiB = 1024 * 1024
#: The largest WriteFile content under the server's 16 MiB message limit (path and tags aside).
BIG = 16 * MiB - 4096
#: The issue's target for 32 concurrent 16 MiB WriteFile calls (VmHWM of the server).
PEAK_LIMIT = 256 * MiB


def _vm(pid: int, key: str) -> int:
    """A ``Vm*`` figure of ``/proc/PID/status`` in bytes (VmHWM: peak resident set)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


async def test_read_file_of_a_huge_line_reads_no_more_than_it_returns(tmp_path: Path) -> None:
    """ReadFile of a 256 MiB file without a newline: the answer is the first 1,000 characters
    and the server never holds the line (512 MiB took it to 1.18 GB)."""
    with (tmp_path / "line.txt").open("wb") as f:
        block = b"r" * MiB
        for _ in range(256):
            f.write(block)
    async with memoh_trio_server(tmp_path) as peer:
        async with memoh_trio.connect(peer.target, token=TEST_TOKEN) as client:
            with trio.fail_after(120):
                got = await client.read_file("line.txt")
        peak = _vm(peer.process.pid, "VmHWM")
    print(f"ReadFile of a 256 MiB line: peak {peak / MiB:.0f} MiB")
    assert got.content == "     1\t" + "r" * 1000 + "...\n"
    assert got.total_lines == 1
    assert peak <= 128 * MiB
