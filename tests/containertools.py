"""The container's own tools failing, for end-to-end tests against Memoh's Go server.

A fault is a wrapper script put first on the ``PATH`` that every ``Exec`` of the migration sees
(:class:`WithPath` adds ``PATH=...`` to each Exec's environment; Memoh's server appends it to its
own, and the last ``PATH`` wins): ``tar`` cut mid-extract, ``python3`` crashing or its output
cut, ``sync``, ``mv``, ``touch`` or ``chmod`` failing. The real tool is the container kind's own
(``run-in.sh``'s applet folder), so everything else behaves as in Memoh's bot image.

Also: :func:`mixed_tree` (a tree that takes every way a file can travel: a tar batch of more
than :data:`memoh_trio._scripts.SHELL_META_MAX` files, streamed files, symlinks, empty files, an
empty directory, modes and nanosecond mtimes) and the invariants of a run (:func:`check_run`).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

import memoh_trio
from memoh_trio import MigrationReport
from memoh_trio._migrate import lifecycle
from memoh_trio._migrate.lifecycle import Trace

APPLETS = Path(os.environ.get("MEMOH_CONTAINERS", "/tmp/memoh-containers"))
#: 2020-01-01T00:00:00Z plus some nanoseconds.
OLD = 1_577_836_800_000_000_000

#: What the python3 wrapper answers the probe with: python3 is there, run as the wrapper itself.
PY_PROBE = """case "$*" in *"python3 ok"*) echo "python3 ok"; echo "python3 exe $0"; exit 0;; esac
"""

#: fault name -> (tool, script body after the shebang; ``$REAL`` is the real tool).
FAULTS: dict[str, tuple[str, str]] = {
    # tar reads only the first 3,000 bytes of the archive: it unpacks some members and fails.
    "tar-cut": ("tar", 'head -c 3000 | "$REAL" "$@"\n'),
    # python3 dies at once (killed), printing nothing.
    "python-crash": ("python3", PY_PROBE + "kill -9 $$\n"),
    # python3 does its work and prints its records, then exits non-zero (killed at exit).
    "python-crash-late": ("python3", PY_PROBE + '"$REAL" "$@"\nexit 134\n'),
    # python3 prints a done record for 200 entries without doing anything, then exits 1.
    "python-lies": ("python3", PY_PROBE + 'cat >/dev/null\ni=0\nwhile [ $i -lt 200 ]; do '
                    'echo "O $i"; i=$((i+1)); done\nexit 1\n'),
    # python3 does its work, but its output is cut after 5 bytes; the exit status is 0.
    "python-output-cut": ("python3", PY_PROBE + '"$REAL" "$@" | head -c 5\nexit 0\n'),
    "sync": ("sync", "echo 'sync: I/O error' >&2\nexit 1\n"),
    "mv": ("mv", "echo 'mv: refused' >&2\nexit 1\n"),
    "touch": ("touch", "echo 'touch: refused' >&2\nexit 1\n"),
    "chmod": ("chmod", "echo 'chmod: refused' >&2\nexit 1\n"),
}


def fault_path(tmp_path: Path, kind: str, fault: str | None) -> str:
    """The ``PATH`` an Exec of ``kind`` sees with ``fault`` installed (``None``: the kind's own)."""
    if fault is None:
        return str(APPLETS / kind)
    tool, body = FAULTS[fault]
    return tools_path(tmp_path, kind, {tool: body}, name=fault)


def tools_path(tmp_path: Path, kind: str, tools: dict[str, str], *, name: str) -> str:
    """The ``PATH`` an Exec of ``kind`` sees with wrappers ``{tool: script body}`` first (in the
    body, ``$REAL`` is the kind's own tool)."""
    applets = APPLETS / kind
    bin_dir = tmp_path / f"bin-{name}"
    bin_dir.mkdir(exist_ok=True)
    for tool, body in tools.items():
        wrapper = bin_dir / tool
        wrapper.write_text(f"#!/bin/sh\nREAL={applets / tool}\n{body}")
        wrapper.chmod(0o755)
    return f"{bin_dir}:{applets}"


class WithPath:
    """A client whose Execs see ``PATH=path``; it records each Exec's command and exit code."""

    def __init__(self, client: Any, path: str) -> None:
        self._client = client
        self.path = path
        self.execs: list[tuple[str, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def exec(self, command: str, **kw: Any) -> Any:
        kw["env"] = [*kw.get("env", []), f"PATH={self.path}"]
        res = await self._client.exec(command, **kw)
        self.execs.append((command, res.exit_code))
        return res


def mixed_tree(src: Path, *, small: int = 20, streamed: int = 10, links: int = 10) -> None:
    """A tree whose files take every way: ``small`` files of a few bytes (a tar batch), ``streamed``
    files of 300 KiB (WriteRaw), ``links`` symlinks, two empty files, an empty directory,
    modes and nanosecond mtimes."""
    for i in range(small):
        p = src / "notes" / f"d{i % 3}" / f"n{i:03d}.md"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"note %d\n" % i * (i + 1))
    for i in range(streamed):
        p = src / "media" / f"m{i:02d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(bytes([i]) * (300 * 1024 + i))
        p.chmod(0o600 + i % 8)
    (src / "links").mkdir()
    for i in range(links):
        (src / "links" / f"l{i:02d}").symlink_to(f"../notes/d{i % 3}/n{i:03d}.md")
    (src / "empty").mkdir()
    (src / "empty" / "a").write_bytes(b"")
    (src / "empty" / "b").write_bytes(b"")
    (src / "emptydir").mkdir()
    paths = sorted((p for p in src.rglob("*")), key=lambda p: -len(p.parts))
    for n, p in enumerate(paths):
        t = OLD + n * 1_000_000_007 + 123_456_789
        os.utime(p, ns=(t, t), follow_symlinks=False)


def snapshot(root: Path, precision: str | None) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` (not ``root`` itself): type, mode, mtime, bytes or target."""
    out: dict[str, tuple[Any, ...]] = {}
    for p in root.rglob("*"):
        st = p.lstat()
        rel = p.relative_to(root).as_posix()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(p))
            continue
        mtime = st.st_mtime_ns if precision == "ns" else st.st_mtime_ns // 10**9
        if stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), mtime)
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), mtime, p.read_bytes())
    return out


def temporaries(root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in root.rglob(".memoh-*")]


def check_run(report: MigrationReport, src: Path, dst: Path) -> None:
    """The invariants of one run, whatever failed in the container: renamed only when migrated,
    with an identical tree (contents, modes, mtimes to the precision the report states); else
    not renamed, and every regular file at a final path holds exactly the source's bytes (no
    torn file). No temporary file is left behind either way."""
    migrated = src.with_name(src.name + ".migrated")
    if report.status == "migrated":
        assert report.renamed_to == str(migrated) and migrated.is_dir() and not src.exists()
        want = snapshot(migrated, report.mtime_precision)
        got = snapshot(dst, report.mtime_precision)
        assert got.keys() == want.keys(), sorted(got.keys() ^ want.keys())[:5]
        diff = [k for k in want if got[k] != want[k]]
        assert diff == [], [(k, want[k][:3], got[k][:3]) for k in diff[:5]]
    else:
        assert report.status == "incomplete", report.status
        assert report.renamed_to is None and src.is_dir() and not migrated.exists()
        assert report.failures or report.error
        for p in dst.rglob("*"):
            rel = p.relative_to(dst)
            if p.is_symlink() or not p.is_file() or p.name.startswith(".memoh-"):
                continue
            source = src / rel
            assert source.is_file() and not source.is_symlink(), f"{rel}: not in the source"
            assert p.read_bytes() == source.read_bytes(), f"{rel}: torn at its final path"
    assert temporaries(dst) == [], temporaries(dst)


class Container:
    """One of Memoh's Go servers under ``kind``; :meth:`run` migrates a source into its own
    destination directory with wrappers first on the Exec's ``PATH``, traced."""

    def __init__(self, client: Any, kind: str, tmp_path: Path, root: Path) -> None:
        self.client, self.kind, self.tmp_path, self.root = client, kind, tmp_path, root
        self.traces: list[Trace] = []
        self.clients: list[WithPath] = []  # each run's, with the Execs it made

    async def run(self, src: Path, dest: str, tools: dict[str, str] | None = None,
                  client: Any = None, **kw: Any) -> memoh_trio.MigrationReport:
        path = (tools_path(self.tmp_path, self.kind, tools, name=dest) if tools
                else fault_path(self.tmp_path, self.kind, None))
        rec = WithPath(client if client is not None else self.client, path)
        self.clients.append(rec)
        with lifecycle.tracing() as trace, trio.fail_after(120):
            report = await memoh_trio.migrate(src, rec, dest=dest, **kw)  # type: ignore[arg-type]
        self.traces.append(trace)
        return report


def tree(src: Path, *, small: int = 0, streamed: int = 0, links: int = 0,
         dirs: int = 0) -> None:
    """``small`` files of a few bytes (tar), ``streamed`` files of 300 KiB, ``links`` symlinks
    and ``dirs`` empty directories."""
    src.mkdir(parents=True)
    for i in range(small):
        (src / "s").mkdir(exist_ok=True)
        (src / "s" / f"s{i:02d}").write_bytes(b"small %d\n" % i)
    for i in range(streamed):
        (src / "m").mkdir(exist_ok=True)
        (src / "m" / f"m{i:02d}").write_bytes(bytes([i + 1]) * (300 * 1024 + i))
    for i in range(links):
        (src / "l").mkdir(exist_ok=True)
        (src / "l" / f"l{i:02d}").symlink_to(f"target-{i}")
    for i in range(dirs):
        (src / "e" / f"e{i:02d}").mkdir(parents=True)


async def ways_of_ten_runs(tmp_path: Path, kind: str) -> dict[str, list[Any]]:
    """The mixed tree into one Memoh Go server under ``kind``, ten times (each run migrated):
    the container steps of each file in the first run, checked to be the same in all ten (the
    way is chosen from what is known, never from which task finished first)."""
    root = tmp_path / "root"
    root.mkdir()
    ways = []
    async with go_container(tmp_path, kind, root) as c:
        for i in range(10):
            src = tmp_path / f"src{i}"
            mixed_tree(src)
            report = await c.run(src, f"d{i}")
            assert report.status == "migrated", (report.failures[:3], report.error)
            ways.append(c.traces[-1].steps)
    assert all(w == ways[0] for w in ways), [
        (rel, [w.get(rel) for w in ways]) for rel in ways[0]
        if any(w.get(rel) != ways[0][rel] for w in ways)][:3]
    return dict(ways[0])


@contextlib.asynccontextmanager
async def go_container(tmp_path: Path, kind: str, root: Path) -> AsyncIterator[Container]:
    """Memoh's Go server over ``root`` under ``kind``, a client, and the :class:`Container`
    that runs migrations into it (its client: ``.client``)."""
    from peers import memoh_go_server

    async with memoh_go_server(root, kind=kind) as peer, \
            memoh_trio.connect(peer.target) as client:
        yield Container(client, kind, tmp_path, root)
