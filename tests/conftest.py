"""Shared test helpers.

``tests/`` is on ``sys.path`` (pytest's rootdir-less import mode), so helper modules such as
``_certs`` and ``faultproxy`` are imported by their plain names.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ParamSpec

import trio

ROOT = Path(__file__).resolve().parent.parent
P = ParamSpec("P")
_CHILD_MARK = "MEMOH_TRIO_TEST_WITHOUT_DAC_OVERRIDE"


def unprivileged(test: Callable[P, Awaitable[None]]) -> Callable[P, Awaitable[None]]:
    """Run a permission test without root's power to read everything.

    root reads everything (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so a test about unreadable
    files would prove nothing as root — and CI runs as root. Under root the decorated test
    re-runs itself in a child pytest whose capability bounding set lacks those two
    (util-linux ``setpriv``), and passes only if that run passed; otherwise it runs as is.
    """

    @functools.wraps(test)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        if os.geteuid() != 0 or os.environ.get(_CHILD_MARK):
            await test(*args, **kwargs)
            return
        nodeid = os.environ["PYTEST_CURRENT_TEST"].rsplit(" ", 1)[0]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        env[_CHILD_MARK] = "1"  # the child is root too: it must run the test, not recurse
        done = await trio.run_process(
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
             sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", nodeid],
            cwd=ROOT, env=env, capture_stdout=True, capture_stderr=True, check=False,
        )
        out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
        assert done.returncode == 0, f"without DAC override:\n{out}"
        assert " passed" in out and "skipped" not in out, out

    return wrapper


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """subprocess.run with text output captured (tests' shorthand)."""
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload,no-any-return]
