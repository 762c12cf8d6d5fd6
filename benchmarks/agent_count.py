"""How many processes one bot's migration starts in the container (issue 25): a count, not a time.

    python -m benchmarks.agent_count [--smoke] [--cache-dir DIR]

One bot of the fleet scenario (``benchmarks/fleet.py``: 356 files, ~12 MB; ``--smoke``: 12) is
migrated four ways into Memoh's Go server under ``run-in.sh busybox-python``, the server run
under ``strace -f -e trace=execve``: memoh-trio today (``memoh_trio.migrate_bot``, in process:
the container agent does the container's work), the same with ``agent=False`` (a process per
step), the prototype of the agent doing the same work (:func:`push_tree`: one Exec, every file,
mode, mtime, link and the flush through ``memoh_trio._agent``), and Memoh's Go migrator
(WriteRaw only) for reference. Prints, for each: the processes started in the container (PIDs
other than the server's), the successful ``execve`` calls by program, and whether the
destination equals the source (content, modes, mtimes to the ns).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import fleet  # noqa: E402

STRACE = shutil.which("strace") or "/usr/bin/strace"
#: Files up to this size go in ``files`` batches; larger ones are written in frames and placed.
SMALL = 256 * 1024
#: Most bytes and entries in one ``files`` batch.
BATCH_BYTES = 2 * 1024 * 1024
BATCH_ENTRIES = 500
_EXECVE = re.compile(r'^(\d+)\s+execve\("([^"]*)".*= 0$')


def walk(src: Path) -> tuple[list[tuple[str, str, os.stat_result]],
                             list[tuple[str, os.stat_result]]]:
    """``(files and links as (relative path, path, lstat), directories)`` under ``src``."""
    entries: list[tuple[str, str, os.stat_result]] = []
    dirs: list[tuple[str, os.stat_result]] = []
    for top, dirnames, filenames in os.walk(src):
        rel_top = os.path.relpath(top, src)
        prefix = "" if rel_top == "." else rel_top + "/"
        for name in dirnames + filenames:
            path = os.path.join(top, name)
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                dirs.append((prefix + name, st))
            else:
                entries.append((prefix + name, path, st))
    return entries, dirs


async def push_tree(agent: Any, src: Path) -> list[str]:
    """Copy ``src`` through a running agent: files (batched when small), modes, mtimes to the
    ns, symlinks, then directories' modes and mtimes deepest first, then ``flush``. Returns the
    failed paths. A prototype of what the lifecycle would ask of the agent, for counting."""
    failed: list[str] = []
    batch: list[dict[str, Any]] = []
    data: list[bytes] = []

    async def send_batch() -> None:
        if batch:
            failed.extend(r.path for r in await agent.files(list(batch), b"".join(data))
                          if not r.ok)
            batch.clear()
            data.clear()

    entries, dirs = await trio.to_thread.run_sync(walk, src)
    for n, (rel, path, st) in enumerate(entries):
        tmp = f"{rel.rpartition('/')[0]}/.memoh-agent-{n}".lstrip("/")
        meta = {"mode": stat.S_IMODE(st.st_mode), "mtime_ns": st.st_mtime_ns,
                "atime_ns": st.st_atime_ns}
        if stat.S_ISLNK(st.st_mode):
            recs = await agent.symlink([{"path": rel, "target": os.readlink(path),
                                         "mtime_ns": st.st_mtime_ns}])
            failed += [r.path for r in recs if not r.ok]
            continue
        content = await trio.Path(path).read_bytes()
        if st.st_size <= SMALL:
            batch.append({"path": tmp, "size": len(content), "final": rel, **meta})
            data.append(content)
            if sum(map(len, data)) >= BATCH_BYTES or len(batch) >= BATCH_ENTRIES:
                await send_batch()
            continue
        rec = await agent.write(tmp, content)
        if not rec.ok:
            failed.append(rel)
            continue
        recs = await agent.place([{"tmp": tmp, "path": rel, "size": len(content), **meta}])
        failed += [r.path for r in recs if not r.ok]
    await send_batch()
    dirs.sort(key=lambda d: -d[0].count("/"))
    recs = await agent.meta([{"path": p, "mode": stat.S_IMODE(st.st_mode),
                              "mtime_ns": st.st_mtime_ns} for p, st in dirs])
    failed += [r.path for r in recs if not r.ok]
    await agent.flush("syncfs")
    return failed


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    for p in root.rglob("*"):
        st = p.lstat()
        rel = p.relative_to(root).as_posix()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, p.read_bytes())
    return out


def _server_pid(trace: Path) -> int:
    """The server's PID: the process of the trace's first ``execve`` of the server binary."""
    for line in trace.read_text().splitlines():
        if "execve(" in line and "memoh-go-server" in line:
            return int(line.split()[0])
    raise ValueError("no server in the trace")


def count_execs(trace: Path, server_pid: int) -> tuple[int, collections.Counter[str]]:
    """(processes other than the server that ran a program, successful execve calls by
    program) in a trace. A process is counted by its successful execve: any other line
    (an execve that failed on a PATH entry, a thread of the server) starts no program."""
    pids: set[int] = set()
    programs: collections.Counter[str] = collections.Counter()
    for line in trace.read_text().splitlines():
        m = _EXECVE.match(line)
        if m and int(m.group(1)) != server_pid:
            pids.add(int(m.group(1)))
            programs[os.path.basename(m.group(2))] += 1
    return len(pids - {server_pid}), programs


async def _migrate_today(bot: str, data_root: Path, target: str, agent: bool) -> None:
    import memoh_trio

    async with memoh_trio.connect(target) as client:
        report = await memoh_trio.migrate_bot(bot, data_root, client, agent=agent)
    assert report.ok and report.renamed_to, (report.status, report.failures[:3], report.error)


async def _migrate_agent(src: Path, target: str) -> None:
    import memoh_trio
    from memoh_trio._agent.session import open_agent

    async with memoh_trio.connect(target) as client, open_agent(client, "") as agent:
        failed = await push_tree(agent, src)
    assert not failed, failed[:5]


def traced(way: str, src_tree: Path, work: Path) -> dict[str, Any]:
    """One way of migrating one bot, its server under strace; the counts."""
    data_root = work / way / "data"
    shutil.copytree(src_tree.parent.parent, data_root, symlinks=True)
    bot = src_tree.name
    src = data_root / "bots" / bot
    root = work / way / "root"
    root.mkdir(parents=True)
    trace = work / way / "trace"
    # strace runs inside run-in.sh's namespace; its -o file is outside the tree it watches.
    argv = fleet.container_argv(fleet.CONTAINER_KIND, [
        STRACE, "-f", "-qq", "-e", "trace=execve", "-e", "signal=none", "-o", str(trace),
        str(fleet.MEMOH_GO_SERVER), "--root", str(root), "--listen", "127.0.0.1:0"])
    with tempfile.TemporaryFile() as log:
        server = fleet.Server(argv, log)
        try:
            server.await_listening(time.monotonic() + fleet.LISTEN_TIMEOUT)
            if way in ("today", "per-step"):
                trio.run(_migrate_today, bot, data_root, server.target, way == "today")
            elif way == "agent":
                trio.run(_migrate_agent, src, server.target)
            else:
                subprocess.run([str(fleet.MEMOH_GO_DIR / "memoh-go-seed"), str(src),
                                server.target], check=True, capture_output=True)
        finally:
            # SIGTERM to the server itself (strace would detach and leave it running), then
            # strace ends with it.
            with contextlib.suppress(StopIteration, ValueError, OSError):
                os.kill(_server_pid(trace), signal.SIGTERM)
            server.stop()
    migrated = src.with_name(bot + ".migrated")
    original = migrated if migrated.exists() else src
    server_pid = _server_pid(trace)
    migrated = src.with_name(bot + ".migrated")
    original = migrated if migrated.exists() else src
    processes, programs = count_execs(trace, server_pid)
    same = snapshot(original) == snapshot(root)
    same_content = {k: v[-1] for k, v in snapshot(original).items() if v[0] == "file"} == \
        {k: v[-1] for k, v in snapshot(root).items() if v[0] == "file"}
    return {"way": way, "processes": processes, "execve": sum(programs.values()),
            "programs": dict(programs.most_common()), "identical": same,
            "same_content": same_content}


class Recorder:
    """Stands in for an agent while :func:`push_tree` runs, to record the frames it would send
    (every entry answered ok); :func:`replay_cpu` then feeds them to a real agent."""

    def __init__(self) -> None:
        from memoh_trio._agent.driver import Driver

        self.driver = Driver()
        self.frames = [self.driver.hello()[1]]

    def _send(self, op: str, fields: dict[str, Any], data: bytes = b"") -> list[Any]:
        from memoh_trio._agent.driver import Record

        self.frames.append(self.driver.send(op, fields, data)[1])
        return [Record(e["path"] if isinstance(e, dict) else e, True)
                for e in fields.get("entries", fields.get("paths", []))]

    async def files(self, entries: list[dict[str, Any]], data: bytes) -> list[Any]:
        return self._send("files", {"entries": entries}, data)

    async def write(self, path: str, content: bytes) -> Any:
        from memoh_trio._agent.driver import Record
        from memoh_trio._agent.session import WRITE_CHUNK

        chunks = max(1, -(-len(content) // WRITE_CHUNK))
        for i in range(chunks):
            self._send("write", {"path": path, "first": i == 0, "last": i == chunks - 1},
                       content[i * WRITE_CHUNK:(i + 1) * WRITE_CHUNK])
        return Record(path, True)

    async def place(self, entries: list[dict[str, Any]]) -> list[Any]:
        return self._send("place", {"entries": entries})

    async def symlink(self, entries: list[dict[str, Any]]) -> list[Any]:
        return self._send("symlink", {"entries": entries})

    async def meta(self, entries: list[dict[str, Any]]) -> list[Any]:
        return self._send("meta", {"entries": entries})

    async def flush(self, how: str = "syncfs") -> None:
        self._send("flush", {"how": how})


def replay_cpu(src: Path, work: Path, rounds: int,
               python: str = "/usr/bin/python3") -> list[tuple[str, float, float]]:
    """CPU (user, system seconds) of the agent doing one bot's work with no server between:
    the frames :func:`push_tree` sends, recorded, replayed into ``python3 -S -c AGENT`` from a
    file; beside ``cp -a`` of the same tree (what writing these bytes costs here at least)
    and the agent started and ended at once. Rounds interleaved; ``os.sync()`` before each."""
    from memoh_trio._agent import command

    recorder = Recorder()
    trio.run(push_tree, recorder, src)
    stream = work / "frames"
    stream.write_bytes(b"".join(recorder.frames) + recorder.driver.bye()[1])
    hello_only = work / "hello"
    bare = Recorder()
    hello_only.write_bytes(bare.frames[0] + bare.driver.bye()[1])
    rows: list[tuple[str, float, float]] = []
    agent = ["sh", "-c", command("out", python=python)]
    for r in range(rounds):
        for label, argv, feed in (("agent, one bot's frames", agent, stream),
                                  ("agent, hello and bye only", agent, hello_only),
                                  ("cp -a of the tree", ["cp", "-a", str(src), "out"], None)):
            cwd = work / f"{r}-{len(rows)}"
            cwd.mkdir()
            os.sync()
            before = os.times()
            with open(feed or os.devnull, "rb") as stdin:
                subprocess.run(argv, cwd=cwd, stdin=stdin, stdout=subprocess.DEVNULL,
                               check=True)
            after = os.times()
            rows.append((label, after.children_user - before.children_user,
                         after.children_system - before.children_system))
    return rows


WAYS = {"today": "memoh-trio today (migrate_bot: the agent)",
        "per-step": "memoh-trio, a process per step (migrate_bot, agent=False)",
        "agent": "the agent doing the same work (one Exec)",
        "go-seed": "Memoh's Go migrator (WriteRaw only)"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(os.environ.get("MEMOH_BENCH_CACHE",
                                                Path.home() / ".cache" / "memoh-trio-bench")))
    ap.add_argument("--replay", type=int, default=0, metavar="ROUNDS",
                    help="also: the agent's CPU for one bot's frames with no server between, "
                         "beside cp -a (medians of ROUNDS)")
    args = ap.parse_args(argv)
    why = fleet.missing()
    if why is not None:
        print(why)
        return 0
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    one = fleet.ensure_fleet(args.cache_dir, 1, args.smoke)
    src = one.src(next(iter(one.bots)))
    files, nbytes = one.bots[src.name]
    print(f"one bot: {files} files, {nbytes / 1e6:.1f} MB; server: memoh-go-server under "
          f"run-in.sh {fleet.CONTAINER_KIND}, traced with strace -f -e trace=execve")
    print("| way | processes in the container | execve | by program | destination = source |")
    print("|---|---:|---:|---|---|")
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as tmp:
        for way, label in WAYS.items():
            r = traced(way, src, Path(tmp))
            progs = ", ".join(f"{k} {v}" for k, v in r["programs"].items()) or "-"
            verdict = ("identical (content, modes, ns mtimes)" if r["identical"]
                       else "same content" if r["same_content"] else "DIFFERENT")
            print(f"| {label} | {r['processes']} | {r['execve']} | {progs} | {verdict} |")
        if args.replay:
            rows = replay_cpu(src, Path(tmp), args.replay)
            print(f"\nCPU with no server between (medians of {args.replay}; noisy machine):")
            print("| what | user ms | system ms |")
            print("|---|---:|---:|")
            for label in dict.fromkeys(label for label, _, _ in rows):
                user = statistics.median(u for k, u, _ in rows if k == label)
                system = statistics.median(s for k, _, s in rows if k == label)
                print(f"| {label} | {1000 * user:.0f} | {1000 * system:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
