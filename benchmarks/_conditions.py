"""The machine's state when a benchmark run starts: two conditions that moved this harness's
figures more than most code changes did, checked and written into the report.

* **Recently freed inodes.** ext4 passes over inodes freed in the last minutes when it allocates
  one (see ``Trash`` in ``run.py``): after a mass deletion (a previous run's outputs, a
  ``git clean``), creating 3,000 small files took 0.5-2.4 s instead of 0.07 s for up to six
  minutes. :func:`settle` times a copy of a small tree (the *probe*) until two probes in a row
  agree and the last is within :data:`SLOWER` of the fastest probe ever seen in this cache
  (two slow probes agree too: right after deleting 10 GB of outputs, 0.52 and 0.43 s against
  0.045 s calm), or gives up after a while, and says which.
* **Free memory.** A VM that backs guest memory lazily makes first writes into never-used pages
  slow: with most of memory free, a 256 MiB buffered write took 0.56 s, with the page cache full
  0.05 s. :func:`memory_free` reads ``MemFree``/``MemTotal``; the report warns above
  :data:`FREE_WARN`.

The decision (:func:`settled`) is pure; the rest is a copy and a sleep.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Files in the probe tree (4 KiB each, 10 directories).
PROBE_FILES = 1000
#: Two probes in a row within this ratio of each other: settled.
AGREE = 1.25
#: The last probe within this factor of the fastest one seen here (see :func:`settled`).
SLOWER = 2.0
#: Seconds between probes while waiting.
PROBE_EVERY = 20.0
#: Above this fraction of memory free, the report warns (see the module docstring).
FREE_WARN = 0.5


def settled(times: Sequence[float], agree: float = AGREE, best: float | None = None) -> bool:
    """Whether the last two probe times agree within ``agree`` and the last is within
    :data:`SLOWER` of ``best``, the fastest probe seen on this machine before (pure)."""
    if len(times) < 2:
        return False
    a, b = times[-2], times[-1]
    return max(a, b) <= agree * min(a, b) and (best is None or b <= SLOWER * best)


@dataclass
class Conditions:
    """What :func:`settle` and :func:`memory_free` found."""

    probes: list[float] = field(default_factory=list)  # seconds per probe copy, in order
    best: float | None = None  # the fastest probe seen here before these
    waited: float = 0.0
    is_settled: bool = False
    free: float | None = None  # MemFree / MemTotal, None where unknown

    def describe(self) -> str:
        """One line for the report."""
        parts = []
        if self.free is not None:
            part = f"{self.free:.0%} of memory free"
            if self.free > FREE_WARN:
                part += (" (**warning**: where guest memory is backed lazily, first writes into "
                         "never-used pages are slow; read a large file first to fill the page "
                         "cache)")
            parts.append(part)
        if self.probes:
            probes = ", ".join(f"{t:.3f}" for t in self.probes)
            verdict = ("settled" if self.is_settled
                       else "**not settled** (figures may carry a file system's recent "
                            "deletions)")
            best = "" if self.best is None else f" (fastest seen here before: {self.best:.3f} s)"
            parts.append(f"file-creation probe ({PROBE_FILES:,} files copied) {probes} s"
                         f"{best}: {verdict} after {self.waited:.0f} s")
        return "; ".join(parts) if parts else "not checked"


def memory_free(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    """``MemFree / MemTotal`` (Linux), else ``None``."""
    try:
        fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines()
                      if ":" in line)
        return int(fields["MemFree"].split()[0]) / int(fields["MemTotal"].split()[0])
    except (OSError, KeyError, ValueError, ZeroDivisionError):
        return None


def probe_tree(cache: Path) -> Path:
    """The probe's source tree under ``cache`` (made once)."""
    tree = cache / "probe-src"
    done = tree / ".complete"
    if not done.exists():
        shutil.rmtree(tree, ignore_errors=True)
        for i in range(PROBE_FILES):
            d = tree / f"d{i % 10}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i:04}").write_bytes(b"p" * 4096)
        done.write_bytes(b"")
    return tree


def settle(cache: Path, put_aside: Callable[[Path], None], max_wait: float,
           sleep: Callable[[float], None] = time.sleep) -> Conditions:
    """Probe file creation until :func:`settled` or ``max_wait`` seconds passed (0: one probe,
    no wait). Each copy is handed to ``put_aside`` (deleting it would be one more deletion).
    The fastest probe of a settled run is kept in ``cache/probe-best`` for the next runs."""
    tree = probe_tree(cache)
    record = cache / "probe-best"
    found = Conditions(free=memory_free(), best=_read_best(record))
    start = time.monotonic()
    waits = 0
    while True:
        dst = cache / f"probe-{len(found.probes)}"
        shutil.rmtree(dst, ignore_errors=True)
        t0 = time.perf_counter()
        shutil.copytree(tree, dst)
        found.probes.append(time.perf_counter() - t0)
        put_aside(dst)
        found.is_settled = settled(found.probes, best=found.best)
        if found.is_settled or (waits + 1) * PROBE_EVERY > max_wait:
            found.waited = time.monotonic() - start
            fastest = min(found.probes)
            # Only a settled run teaches what calm looks like here: a lone probe taken right
            # after a mass deletion (a smoke run's) would make every later slow probe "settled".
            if found.is_settled and (found.best is None or fastest < found.best):
                record.write_text(f"{fastest:.6f}\n")
            return found
        sleep(PROBE_EVERY)
        waits += 1


def _read_best(record: Path) -> float | None:
    try:
        best = float(record.read_text())
    except (OSError, ValueError):
        return None
    return best if best > 0 else None
