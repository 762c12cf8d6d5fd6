"""Shared test helpers.

``tests/`` is on ``sys.path`` (pytest's rootdir-less import mode), so helper modules such as
``_certs`` and ``faultproxy`` are imported by their plain names.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import Any, ParamSpec

import pytest
import trio
from _pytest.outcomes import Skipped

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



@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    """Keep the reason of a skip raised inside a trio test (issue 26).

    pytest-trio 0.8 turns a ``pytest.skip(reason)`` that trio wrapped in an exception group
    into a bare ``pytest.skip()`` (plugin.py: ``if isinstance(leaves[0], Skipped):
    pytest.skip()``; python-trio/pytest-trio#151), so a test whose real peers are missing said
    ``SKIPPED [31] .../_pytest/python.py:187: Skipped`` instead of why and what to run
    (``tests/peers.py``). The original skip is still the bare one's context: raise it instead.
    """
    try:
        return (yield)
    except Skipped as exc:
        group = exc.__context__
        leaves = _leaves(group) if isinstance(group, BaseExceptionGroup) else []
        if len(leaves) == 1 and isinstance(leaves[0], Skipped) and leaves[0].msg:
            raise leaves[0] from None
        raise


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


@pytest.fixture
def per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The container steps carried out by a process each (python3 or the shell), as without
    the container agent (a test of that executor: its Execs, its python3 scripts)."""
    from memoh_trio._migrate import meta

    monkeypatch.setattr(meta, "USE_AGENT", False)


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    """memoh-trio's server over ``tmp_path/container``, as a child process (with the test
    token); a module may define its own ``server`` instead."""
    from peers import memoh_trio_server

    root = tmp_path / "container"
    root.mkdir()
    async with memoh_trio_server(root) as peer:
        yield peer
