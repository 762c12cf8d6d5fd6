"""What every contender process reports back to ``benchmarks/run.py``.

A contender runs as its own process and prints one line ``RESULT {json}`` on stdout when done:
wall seconds and CPU seconds of the timed region (connect + copy + final rename; interpreter start
and imports excluded, for every contender alike), files and bytes it copied, and anything else it
wants shown. Peak RSS is taken by the harness from the process's rusage.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from types import TracebackType
from typing import Any

RESULT_PREFIX = "RESULT "

#: ``PATH`` of every server process (and so of the commands Exec runs in the "container"):
#: Docker's default, as in a real container, not the developer's shell. On the benchmark
#: machine the shell's ``python3`` is a pyenv shim, a bash script that cost 60-100 ms of CPU
#: per start (the real interpreter: ~15 ms); no container has one, and it taxed only the
#: contender that asks the container for python3.
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return ru.ru_utime + ru.ru_stime


class Meter:
    """Times a region: ``with Meter() as m: ...`` then ``m.emit(files=..., bytes=...)``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu = 0.0
        self._t0 = 0.0
        self._c0 = 0.0

    def __enter__(self) -> Meter:
        self._c0 = _cpu()
        self._t0 = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.cpu = _cpu() - self._c0

    def emit(self, **fields: Any) -> None:
        payload = {"seconds": self.seconds, "cpu": self.cpu, "peak_rss": peak_rss(), **fields}
        sys.stdout.write(RESULT_PREFIX + json.dumps(payload) + "\n")
        sys.stdout.flush()


def peak_rss() -> int:
    """This process's peak resident set size in bytes (``VmHWM``).

    Not ``ru_maxrss``: on Linux a child's ``ru_maxrss`` starts from its parent's at fork and
    survives exec, so a small client started by a big harness would report the harness's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def parse_result(stdout: str) -> dict[str, Any] | None:
    """The last ``RESULT`` line of a contender's stdout, decoded; None if there is none."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            value = json.loads(line[len(RESULT_PREFIX) :])
            if isinstance(value, dict):
                return value
    return None


def split_target(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host, int(port)
