"""Real peer processes for end-to-end tests: Memoh's Go server and migrator, and memoh-trio's own
server as a child process, optionally inside a kind of real container's userland.

Memoh's binaries are built from ``../shared/memoh-go`` by ``build.sh --install`` (``.ci/run`` does
it before the tests). Tests that need them carry ``@pytest.mark.memoh_go`` and use
:func:`need_memoh_go`, which skips with the reason and the command to run when they are absent.

Container kinds (``../shared/containers/run-in.sh``): ``busybox`` (Alpine-like: busybox ``sh``
and applets only, no python3), ``busybox-python``, ``gnu-nopython`` (Debian-slim-like without
python3). The kind changes what the server's ``Exec`` sees; file RPCs are unaffected.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MEMOH_SHARED", ROOT.parent / "shared"))
MEMOH_GO_DIR = Path(os.environ.get("MEMOH_GO_OUT", "/tmp/memoh-go"))
MEMOH_GO_SERVER = MEMOH_GO_DIR / "memoh-go-server"
MEMOH_GO_SEED = MEMOH_GO_DIR / "memoh-go-seed"
RUN_IN = SHARED / "containers" / "run-in.sh"
BUILD_HINT = "run ../shared/memoh-go/build.sh --install (.ci/run does)"
#: Seconds a server has to print ``listening on HOST:PORT``.
LISTEN_TIMEOUT = 30.0
#: The token tests give memoh-trio's server (through the environment, never argv).
TEST_TOKEN = "memoh-trio-test-token"
CONTAINER_KINDS = ("busybox", "busybox-python", "gnu-nopython")


def need_memoh_go() -> None:
    """Skip the calling test, with a clear reason, when Memoh's Go binaries are not built."""
    missing = [p.name for p in (MEMOH_GO_SERVER, MEMOH_GO_SEED) if not os.access(p, os.X_OK)]
    if missing:
        _skip_or_fail(f"Memoh's Go binaries not built ({', '.join(missing)} missing in "
                    f"{MEMOH_GO_DIR}): {BUILD_HINT}")


def _skip_or_fail(reason: str) -> None:
    """Skip with ``reason``; fail instead where CI requires the peers (``.ci/run`` sets
    ``MEMOH_TRIO_REQUIRE_PEERS=1``, so the interop tests can never silently not run there)."""
    if os.environ.get("MEMOH_TRIO_REQUIRE_PEERS") == "1":
        pytest.fail(f"required peer unavailable: {reason}")
    pytest.skip(reason)


def need_container(kind: str) -> None:
    """Skip unless ``run-in.sh KIND`` can work here (root and util-linux ``unshare``)."""
    if not RUN_IN.exists():
        _skip_or_fail(f"{RUN_IN} not found (the shared/ folder is not beside this checkout)")
    if kind.startswith("busybox") and (os.geteuid() != 0 or shutil.which("unshare") is None):
        _skip_or_fail("busybox containers need root and util-linux unshare (run-in.sh)")


@dataclass
class Peer:
    """A server child process that printed ``listening on HOST:PORT``."""

    process: trio.Process
    target: str
    root: Path


async def _read_listening(proc: trio.Process) -> str:
    assert proc.stdout is not None
    buf = b""
    with trio.fail_after(LISTEN_TIMEOUT):
        while b"\n" not in buf:
            data = await proc.stdout.receive_some(4096)
            if not data:
                raise RuntimeError(f"server exited before listening (exit {proc.returncode})")
            buf += data
    line = buf.split(b"\n", 1)[0].decode()
    assert line.startswith("listening on "), line
    return line.rpartition(" ")[2]


@contextlib.asynccontextmanager
async def peer_process(cmd: Sequence[str], root: Path,
                       env: dict[str, str] | None = None) -> AsyncIterator[Peer]:
    """Run a server command until the block ends (SIGTERM, then SIGKILL after 5 s)."""
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(functools.partial(
            trio.run_process, list(cmd), stdout=-1, stderr=None, env=env, check=False))
        try:
            target = await _read_listening(proc)
            # Drain stdout so a chatty server never blocks on a full pipe.
            nursery.start_soon(_drain, proc)
            yield Peer(proc, target, root)
        finally:
            with trio.CancelScope(shield=True):
                if proc.returncode is None:
                    proc.terminate()
                    with trio.move_on_after(5):
                        await proc.wait()
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()


async def _drain(proc: trio.Process) -> None:
    assert proc.stdout is not None
    with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
        while await proc.stdout.receive_some(65536):
            pass


@contextlib.asynccontextmanager
async def memoh_go_server(root: Path, *, kind: str | None = None) -> AsyncIterator[Peer]:
    """Memoh's real ContainerService (grpc-go) over ``root`` on 127.0.0.1, its Exec inside
    ``kind``'s userland when given (``busybox-python`` is Memoh's own bot image)."""
    need_memoh_go()
    cmd = [str(MEMOH_GO_SERVER), "--root", str(root), "--listen", "127.0.0.1:0"]
    if kind is not None:
        need_container(kind)
        cmd = ["bash", str(RUN_IN), kind, *cmd]
    async with peer_process(cmd, root) as peer:
        yield peer


def memoh_trio_serve_cmd(root: Path, *extra: str, kind: str | None = None) -> list[str]:
    """``memoh-trio serve`` over ``root`` on a free port, optionally inside a container kind."""
    cmd = [sys.executable, "-m", "memoh_trio", "serve", "--root", str(root),
           "--listen", "127.0.0.1:0", *extra]
    if kind is None:
        return cmd
    need_container(kind)
    return ["bash", str(RUN_IN), kind, *cmd]


def serve_env(token: str | None = TEST_TOKEN) -> dict[str, str]:
    """The environment for a ``memoh-trio serve`` child (token through the environment)."""
    env = dict(os.environ)
    env.pop("MEMOH_TRIO_TOKEN", None)
    if token is not None:
        env["MEMOH_TRIO_TOKEN"] = token
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    return env


@contextlib.asynccontextmanager
async def memoh_trio_server(root: Path, *extra: str, kind: str | None = None,
                            token: str | None = TEST_TOKEN) -> AsyncIterator[Peer]:
    """memoh-trio's server as a child process (inside ``kind``'s userland when given)."""
    async with peer_process(memoh_trio_serve_cmd(root, *extra, kind=kind), root,
                            env=serve_env(token)) as peer:
        yield peer


async def run_memoh_go_seed(src: Path, target: str,
                            limit: float = 120.0) -> tuple[int, str, str]:
    """Memoh's migrator (``migrateBindMountData``) on ``src`` into ``target``.

    Returns ``(exit code, stdout, stderr)``; stdout is ``migrated=N failed=M renamed=BOOL``.
    """
    need_memoh_go()
    with trio.fail_after(limit):
        done = await trio.run_process([str(MEMOH_GO_SEED), str(src), target],
                                      capture_stdout=True, capture_stderr=True, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()
