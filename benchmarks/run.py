"""memoh-trio benchmarks: every contender side by side, in one run, on 127.0.0.1.

    python benchmarks/run.py                      # all scenarios, 3 repetitions, medians
    python benchmarks/run.py --smoke              # seconds: tiny trees, 1 repetition, temp dir
    python benchmarks/run.py --scenarios a,b --repeat 5
    python benchmarks/run.py --repeat-for d=1,e=1 # fewer repetitions for the big scenarios
    python benchmarks/run.py --profile DIR        # cProfile memoh-trio's client and server
    python benchmarks/run.py --replot benchmarks/results/latest.md   # redraw its chart only
    python benchmarks/run.py --fleet              # also the fleet of issue 25 (benchmarks/fleet.py)

Writes ``latest.md`` (tables, the headline and the targets as PASS/MISS) and ``latest.png`` (the
chart, ``benchmarks/_chart.py``). Only a full run (every scenario and contender) writes them into
``benchmarks/results/``, the published figures; a subset (``--scenarios``, ``--contenders``) or
a smoke run writes into a new temporary directory and says where, unless ``--publish`` (publish
it anyway) or ``--out DIR`` says otherwise (:func:`results_dir`).

Every contender is a separate client process and, where there is one, a separate server process
started fresh for each run on a fresh, empty root, so CPU seconds and peak RSS are measured for
client and server apart (client: its own rusage over the timed region and ``wait4``'s peak RSS;
server: ``/proc`` CPU time between "listening" and the client's exit, and ``VmHWM``). Each run's
destination is checked against the source manifest (file count and bytes; full content in smoke
runs), and a migrating contender must have renamed its source (renamed back for the next run).
Repetitions interleave the contenders, and every ratio is taken between medians of this one run:
the machine is shared and absolute figures move between runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(REPO))

from benchmarks import _chart, _conditions, fleet, scenarios, startup  # noqa: E402
from benchmarks._measure import CONTAINER_PATH, parse_result  # noqa: E402

PY = sys.executable
MiB = 1024 * 1024
LISTEN_TIMEOUT = 30.0  # seconds for a server to print "listening on"
RESULTS = REPO / "benchmarks" / "results"


# ----------------------------------------------------------------------------------------------
# Contenders


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    server: str  # "memoh" | "grpcio" | "raw" | "none"
    argv: Callable[[str, Path, Path], list[str]]  # (target, src, dest root) -> client command
    migrates: bool  # renames its source to <src>.migrated on success
    copy_subdir: str = ""  # where the copy lands under the destination root


def _module(name: str, *extra: str) -> Callable[[str, Path, Path], list[str]]:
    def argv(target: str, src: Path, dest: Path) -> list[str]:
        return [PY, "-m", name, "--target", target, "--src", str(src), *extra]

    return argv


def _raw_argv(target: str, src: Path, dest: Path) -> list[str]:
    return [PY, "-m", "benchmarks.raw_tcp", "send", "--target", target, "--src", str(src)]


def _cp_argv(target: str, src: Path, dest: Path) -> list[str]:
    return ["cp", "-r", str(src), str(dest / "copy")]


#: Memoh's Go binaries (``../shared/memoh-go/build.sh --install`` builds them there).
MEMOH_GO_DIR = Path(os.environ.get("MEMOH_GO_OUT", "/tmp/memoh-go"))
MEMOH_GO_SERVER = MEMOH_GO_DIR / "memoh-go-server"
MEMOH_GO_SEED = MEMOH_GO_DIR / "memoh-go-seed"
MEMOH_GO_BUILD = REPO.parent / "shared" / "memoh-go" / "build.sh"
if not MEMOH_GO_BUILD.exists():  # a worktree under /work/wt/: shared/ is beside its parent
    MEMOH_GO_BUILD = REPO.parent.parent / "shared" / "memoh-go" / "build.sh"
#: The token memoh-trio's server requires in benchmark runs and its clients send
#: (``MEMOH_TRIO_TOKEN`` in every process's environment; Memoh's Go server ignores it).
BENCH_TOKEN = "memoh-trio-bench-token"


def _go_seed_argv(target: str, src: Path, dest: Path) -> list[str]:
    return [str(MEMOH_GO_SEED), str(src), target]


def _go_seed_sync_argv(target: str, src: Path, dest: Path) -> list[str]:
    """Memoh's Go migrator, then ``sync``: its copy made as durable as memoh-trio's, which
    syncs before it renames the source (the Go migrator renames without it)."""
    return ["sh", "-c", '"$0" "$1" "$2" && sync', str(MEMOH_GO_SEED), str(src), target]


def _cli_argv(target: str, src: Path, dest: Path) -> list[str]:
    """``memoh-trio migrate`` as an operator runs it: the console script, whole process."""
    script = Path(PY).parent / "memoh-trio"
    launcher = [str(script)] if script.exists() else [PY, "-m", "memoh_trio"]
    return [*launcher, "migrate", str(src), "--target", target, "--json"]


CONTENDERS: tuple[Contender, ...] = (
    Contender("memoh", "memoh-trio (defaults)", "memoh", _module("benchmarks.memoh_client"), True),
    Contender("memoh@grpcio", "memoh-trio (defaults)", "grpcio",
              _module("benchmarks.memoh_client"), True),
    Contender("memoh-c1", "memoh-trio (concurrency 1)", "memoh",
              _module("benchmarks.memoh_client", "--concurrency", "1"), True),
    Contender("seed", "seed algorithm (grpcio client)", "grpcio",
              _module("benchmarks.seed_grpcio"), True),
    Contender("grpcio-fast", "grpcio fast (aio, 16 streams)", "grpcio",
              _module("benchmarks.grpcio_fast"), True),
    Contender("raw-tcp", "raw TCP socket copy", "raw", _raw_argv, False),
    Contender("cp", "cp -r", "none", _cp_argv, False, copy_subdir="copy"),
    # Issue 12: Memoh's own Go migrator and memoh-trio, both into Memoh's own Go server.
    Contender("go-seed", "Memoh Go migrator", "go", _go_seed_argv, True),
    Contender("go-seed+sync", "Memoh Go migrator, then sync", "go", _go_seed_sync_argv, True),
    Contender("cli@go", "memoh-trio CLI", "go", _cli_argv, True),
    Contender("memoh@go", "memoh-trio (defaults)", "go", _module("benchmarks.memoh_client"), True),
)
SERVER_LABELS = {"memoh": "memoh-trio", "grpcio": "grpcio", "raw": "raw receiver", "none": "-",
                 "go": "Memoh Go"}
#: Contenders run as whole processes an operator starts: their time is the process's wall time.
WHOLE_PROCESS = {"go-seed", "go-seed+sync", "cli@go", "cp"}


def memoh_go_missing() -> str | None:
    """Why Memoh's Go binaries cannot run here (None: they can), after one build attempt."""
    def missing() -> list[str]:
        return [p.name for p in (MEMOH_GO_SERVER, MEMOH_GO_SEED) if not os.access(p, os.X_OK)]

    if missing() and MEMOH_GO_BUILD.exists():
        print(f"building Memoh's Go binaries: {MEMOH_GO_BUILD} --install", flush=True)
        subprocess.run([str(MEMOH_GO_BUILD), "--install"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False, timeout=900)
    if missing():
        return (f"skipped: Memoh's Go binaries not built ({', '.join(missing())} missing in "
                f"{MEMOH_GO_DIR}; run ../shared/memoh-go/build.sh --install)")
    return None


# ----------------------------------------------------------------------------------------------
# Processes


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONHASHSEED", "0")
    env["MEMOH_TRIO_TOKEN"] = BENCH_TOKEN
    return env


def server_env() -> dict[str, str]:
    """The environment of a server process: :func:`_env` with :data:`CONTAINER_PATH`."""
    env = _env()
    env["PATH"] = CONTAINER_PATH
    return env


def proc_times(pid: int) -> tuple[float, float, int]:
    """(user CPU seconds, system CPU seconds, minor page faults) of a live process, all
    threads, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks, int(fields[7])


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a live process, plus those of the children
    it has waited for: the commands a server ran for Exec (tar, sh, python3 in the container)
    are its work too (without them memoh-trio's tar path into Memoh's server showed 0.08 s of
    server CPU for scenario (a), against 0.30 s with them)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def proc_peak_rss(pid: int) -> int:
    """Peak resident set size in bytes (VmHWM) of a live process."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class ServerProc:
    """A server subprocess that has printed ``listening on HOST:PORT``."""

    def __init__(self, argv: Sequence[str], log: IO[bytes]) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv, cwd=REPO, env=server_env(), stdout=subprocess.PIPE, stderr=log,
            start_new_session=True,
        )
        self.log = log
        self.target = self._await_listening()
        self.cpu0 = _proc_cpu(self.proc.pid)
        # Keep draining stdout so a chatty server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _await_listening(self) -> str:
        assert self.proc.stdout is not None
        found: list[str] = []

        def reader() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").strip()
                if "listening on " in line:
                    found.append(line.rpartition("listening on ")[2].split()[0])
                    return

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        t.join(LISTEN_TIMEOUT)
        if not found:
            self.stop()
            raise RuntimeError(f"server did not start: {' '.join(self.argv)}\n{self.stderr()}")
        return found[0]

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def stderr(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def usage(self) -> tuple[float, int]:
        """(CPU seconds since listening, peak RSS bytes)."""
        return _proc_cpu(self.proc.pid) - self.cpu0, proc_peak_rss(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class ClientOutcome:
    rc: int
    wall: float
    cpu: float  # whole process, from wait4
    peak_rss: int
    stdout: str
    stderr: str


def run_client(argv: Sequence[str], timeout: float) -> ClientOutcome:
    """Run a client to completion, reaping it with ``wait4`` to get its own rusage."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(argv), cwd=REPO, env=_env(), stdout=out, stderr=err,
                                start_new_session=True)
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        # Peak RSS from /proc while it runs (wait4's ru_maxrss would include this harness's own
        # RSS, inherited at fork); Python contenders also report their exact VmHWM themselves.
        peak = [0]
        done = threading.Event()

        def poll() -> None:
            while not done.wait(0.02):
                with contextlib.suppress(OSError, ValueError):
                    peak[0] = max(peak[0], proc_peak_rss(proc.pid))

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            done.set()
            poller.join()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ClientOutcome(
            rc=proc.returncode, wall=wall, cpu=ru.ru_utime + ru.ru_stime,
            peak_rss=peak[0], stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


class Servers:
    """Starts the server for a contender on a fresh root; remembers how to start memoh-trio's."""

    def __init__(self, profile_dir: Path | None = None) -> None:
        self.memoh_launcher = "cli"  # falls back to benchmarks.servers while the CLI cannot serve
        self.profile_dir = profile_dir
        self.profiles = 0

    def _argv(self, kind: str, root: Path) -> list[str]:
        if kind == "memoh" and self.profile_dir is None and self.memoh_launcher == "cli":
            return [PY, "-m", "memoh_trio", "serve", "--root", str(root),
                    "--listen", "127.0.0.1:0"]  # the token: MEMOH_TRIO_TOKEN (BENCH_TOKEN)
        if kind == "memoh":
            argv = [PY, "-m", "benchmarks.servers", "memoh", "--root", str(root)]
            if self.profile_dir is not None:
                self.profiles += 1
                argv += ["--profile", str(self.profile_dir / f"server-{self.profiles}.prof")]
            return argv
        if kind == "grpcio":
            return [PY, "-m", "benchmarks.servers", "grpcio", "--root", str(root)]
        if kind == "raw":
            return [PY, "-m", "benchmarks.raw_tcp", "serve", "--root", str(root)]
        if kind == "go":
            return [str(MEMOH_GO_SERVER), "--root", str(root), "--listen", "127.0.0.1:0"]
        raise ValueError(kind)

    def start(self, kind: str, root: Path, log: IO[bytes]) -> ServerProc:
        try:
            return ServerProc(self._argv(kind, root), log)
        except RuntimeError:
            if kind != "memoh" or self.memoh_launcher != "cli" or self.profile_dir is not None:
                raise
            self.memoh_launcher = "benchmarks.servers (memoh_trio.serve)"
            log.seek(0)
            log.truncate()
            return ServerProc(self._argv(kind, root), log)


# ----------------------------------------------------------------------------------------------
# One run


@dataclass
class RunResult:
    seconds: float  # the timed region (in-process), or the whole process where there is none
    wall: float  # the whole client process, interpreter start included
    files: int
    bytes: int
    client_cpu: float
    client_rss: int
    server_cpu: float | None
    server_rss: int | None


@dataclass
class Cell:
    """All runs of one contender on one scenario."""

    runs: list[RunResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        return statistics.median(values) if values else None

    def peak(self, attr: str) -> int | None:
        values = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        return max(values) if values else None


def _timeout(manifest: scenarios.Manifest) -> float:
    # Generous: a stuck contender must end the run, a slow one must not.
    return 120.0 + manifest.bytes / (4 * 1000 * 1000) + manifest.files * 0.05


def _rmtree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


#: Run outputs with at least this many files are put aside, not deleted, after their run.
KEEP_ASIDE_MIN_FILES = 100
#: Exit code of a run refused for want of disk space (:func:`check_disk`); 1 is a failed run.
EXIT_NO_ROOM = 3


class Trash:
    """Run outputs put aside (one rename each) and deleted when the harness ends.

    A file system may pass over recently freed inodes when it allocates one: ext4 without a
    journal does for 60 s (``recently_deleted()`` in ``fs/ext4/ialloc.c``), checking each freed
    inode in turn. Deleting a run's thousands of files then made every file the next runs
    created cost up to 0.6 ms (perf: ``find_inode_bit``, ``recently_deleted``): 3,000 small
    files took 0.46 s in the first run of a scenario and 1.4-1.8 s in the later ones, whoever
    ran them. Outputs with few files (the large-file scenarios) are deleted at once.
    """

    def __init__(self, parent: Path) -> None:
        self.dir = parent / f"trash-{os.getpid()}"
        self.count = 0

    def put(self, path: Path) -> None:
        self.dir.mkdir(exist_ok=True)
        path.rename(self.dir / str(self.count))
        self.count += 1

    def empty(self) -> None:
        _rmtree(self.dir)


def disk_needed(keys: Sequence[str], contenders: Sequence[Contender], skip: set[str],
                repeats: dict[str, int], cache: Path, smoke: bool) -> int:
    """Bytes of disk a run needs in ``cache``: the trees not generated yet, every output of
    100+ files (kept aside until the end, see :class:`Trash`) and the largest of the others
    (one at a time)."""
    kept = transient = 0
    for key in keys:
        files, size = scenarios.disk_size(key, smoke)
        if not (scenarios.scenario_dir(cache, key, smoke) / "manifest.json").exists():
            kept += size
        runs = repeats[key] * sum(f"{key}:{c.key}" not in skip for c in contenders)
        if files >= KEEP_ASIDE_MIN_FILES:
            kept += runs * size
        elif runs:
            transient = max(transient, size)
    return kept + transient


def check_disk(needed: int, cache: Path) -> str | None:
    """A one-line error when ``cache``'s file system has less than ``needed`` bytes free."""
    free = shutil.disk_usage(cache).free
    if free >= needed:
        return None
    return (f"run.py: error: the run needs about {needed / 1e9:.1f} GB free in {cache} (outputs "
            f"of {KEEP_ASIDE_MIN_FILES}+ files are kept until the end), {free / 1e9:.1f} GB "
            "are; hint: free some, or give --cache-dir on a larger disk, or fewer "
            "--scenarios / --repeat-for")


def run_once(c: Contender, src: Path, manifest: scenarios.Manifest, work: Path,
             servers: Servers, *, full_check: bool, extra: Sequence[str] = (),
             trash: Trash | None = None) -> RunResult:
    dest = work / "dest"
    _rmtree(dest)
    dest.mkdir(parents=True)
    # Untimed: flush what earlier runs (and the dataset's generation) left dirty in the page
    # cache. Contenders that end with a sync (memoh-trio syncs before it renames the source)
    # would otherwise pay for the writes of the ones that do not (the seed, grpcio, cp).
    os.sync()
    server: ServerProc | None = None
    with tempfile.TemporaryFile() as log:
        try:
            if c.server != "none":
                server = servers.start(c.server, dest, log)
            target = server.target if server is not None else ""
            outcome = run_client([*c.argv(target, src, dest), *extra], _timeout(manifest))
            server_cpu = server_rss = None
            if server is not None:
                if server.proc.poll() is not None:
                    raise RuntimeError(f"server died (rc {server.proc.returncode}):\n"
                                       f"{server.stderr()}")
                server_cpu, server_rss = server.usage()
        finally:
            if server is not None:
                server.stop()
        migrated = src.with_name(src.name + ".migrated")
        try:
            if outcome.rc != 0:
                raise RuntimeError(
                    f"client exit {outcome.rc}:\n{outcome.stderr[-3000:]}\n"
                    f"{outcome.stdout[-1500:]}"
                    + (f"\nserver log:\n{server.stderr()}" if server is not None else "")
                )
            result = parse_result(outcome.stdout) or {}
            if c.migrates and not (migrated.is_dir() and not src.exists()):
                raise RuntimeError(f"source was not renamed to {migrated.name}: {result}")
            copy = dest / c.copy_subdir if c.copy_subdir else dest
            files, nbytes = scenarios.tree_totals(copy)
            if (files, nbytes) != (manifest.files, manifest.bytes):
                raise RuntimeError(
                    f"destination has {files} files/{nbytes} B, the source "
                    f"{manifest.files}/{manifest.bytes}")
            if full_check:
                bad = scenarios.same_content(migrated if c.migrates else src, copy)
                if bad:
                    raise RuntimeError(f"{len(bad)} files differ, e.g. {bad[:3]}")
        finally:
            scenarios.restore_source(src)
            if trash is not None and manifest.files >= KEEP_ASIDE_MIN_FILES and dest.exists():
                trash.put(dest)
            else:
                _rmtree(dest)
    return RunResult(
        seconds=float(result.get("seconds", outcome.wall)) if c.key not in WHOLE_PROCESS
        else outcome.wall,
        wall=outcome.wall,
        files=manifest.files, bytes=manifest.bytes,
        client_cpu=float(result.get("cpu", outcome.cpu)),
        client_rss=int(result.get("peak_rss") or outcome.peak_rss),
        server_cpu=server_cpu, server_rss=server_rss,
    )


def compile_package() -> None:
    """Byte-compile memoh-trio (untimed), as ``pip install`` does for an operator's install.

    An editable install under ``PYTHONDONTWRITEBYTECODE=1`` (this machine sets it) has no
    ``.pyc`` files for the package: every CLI start would compile its ~40 modules from source
    (~30 ms of a ~200 ms start, ``python -v`` / cProfile ``builtins.compile``), a cost no
    installed copy pays. Stale ``.pyc`` files are rebuilt by the same call.
    """
    import compileall

    import memoh_trio

    compileall.compile_dir(str(Path(memoh_trio.__file__).parent), quiet=1)


def _warm(src: Path) -> None:
    """Read every source byte once so no contender pays for a cold page cache."""
    buf = bytearray(MiB)
    for dirpath, _, filenames in os.walk(src):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass


# ----------------------------------------------------------------------------------------------
# Report


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / MiB:,.0f}"


def throughput(cell: Cell) -> tuple[float, float] | None:
    """(MB/s, files/s) from the median time."""
    seconds = cell.median("seconds")
    if not seconds or not cell.runs:
        return None
    r = cell.runs[0]
    return r.bytes / seconds / 1e6, r.files / seconds


@dataclass
class Target:
    name: str
    measured: str
    goal: str
    passed: bool | None  # None: not measured in this run


def evaluate_targets(cells: dict[str, dict[str, Cell]], smoke: bool) -> list[Target]:
    def seconds(s: str, c: str) -> float | None:
        cell = cells.get(s, {}).get(c)
        return cell.median("seconds") if cell is not None and cell.runs else None

    def ratio(s: str, fast: str, slow: str) -> float | None:
        a, b = seconds(s, fast), seconds(s, slow)
        return b / a if a and b else None  # speed ratio = inverse time ratio, same bytes

    out: list[Target] = []

    def add(name: str, value: float | None, goal: float, unit: str = "x",
            at_most: bool = False) -> None:
        if value is None:
            out.append(Target(name, "not measured", f"{'<=' if at_most else '>='} {goal}{unit}",
                              None))
            return
        ok = value <= goal if at_most else value >= goal
        shown = f"{value:,.2f}{unit}" if unit == "x" else f"{value:,.0f} {unit}"
        goal_s = f"{goal}{unit}" if unit == "x" else f"{goal:,.0f} {unit}"
        out.append(Target(name, shown, f"{'<=' if at_most else '>='} {goal_s}", ok))

    add("(a) small files: memoh-trio / seed algorithm, both on the grpcio server",
        ratio("a", "memoh@grpcio", "seed"), 3.0)
    add("(b) large files: memoh-trio / seed algorithm, both on the grpcio server",
        ratio("b", "memoh@grpcio", "seed"), 1.0)
    for s in ("a", "b", "c", "d", "e"):
        if s in cells:
            add(f"({s}) server: memoh-trio server / grpcio server, memoh-trio client",
                ratio(s, "memoh", "memoh@grpcio"), 1.0)
    e = cells.get("e", {}).get("memoh")
    size = "8 MiB (smoke)" if smoke else "4 GiB"
    for side in ("client", "server"):
        rss = e.peak(f"{side}_rss") if e is not None else None
        add(f"(e) memory: memoh-trio {side} peak RSS, {size}",
            rss / MiB if rss else None, 100, "MiB", at_most=True)

    def per_file(s: str) -> float | None:
        cell = cells.get(s, {}).get("memoh")
        t = seconds(s, "memoh")
        return t / cell.runs[0].files if cell and cell.runs and t else None

    for s, goal in GO_TARGETS.items():
        if s in cells:
            add(f"({s}) operator's view: Memoh Go migrator / memoh-trio CLI, whole process, "
                "Memoh Go server", ratio(s, "cli@go", "go-seed"), goal)
    e_go = cells.get("e", {}).get("cli@go")
    rss_go = e_go.peak("client_rss") if e_go is not None else None
    add(f"(e) memory: memoh-trio CLI peak RSS into Memoh Go server, {size}",
        rss_go / MiB if rss_go else None, GO_RSS_MIB, "MiB", at_most=True)

    pa, pd = per_file("a"), per_file("d")
    add("(d) scale: per-file time, (d) / (a), memoh-trio on its server",
        pd / pa if pa and pd else None, 1.2, at_most=True)
    return out


#: The operator's targets: Memoh's Go migrator's whole-process time / memoh-trio CLI's, both
#: into Memoh's Go server, per scenario.
GO_TARGETS = {"a": 2.0, "b": 1.0, "c": 1.5, "d": 3.0}
#: (e): memoh-trio's client peak RSS moving 4 GiB into Memoh's Go server, at most this.
GO_RSS_MIB = 100


def render_single_bot(cells: dict[str, dict[str, Cell]], smoke: bool) -> list[str]:
    """One bot: Memoh's own Go migrator vs memoh-trio, into Memoh's own Go server (the
    headline before the fleet; with ``--fleet`` the fleet leads, :data:`fleet.FLEET_TITLE`)."""
    def cell(s: str, c: str) -> Cell | None:
        found = cells.get(s, {}).get(c)
        return found if found is not None and found.runs else None

    def secs(s: str, c: str, attr: str = "seconds") -> float | None:
        found = cell(s, c)
        return found.median(attr) if found is not None else None

    def why(s: str, c: str) -> str:
        found = cells.get(s, {}).get(c)
        if found is None:
            return "not run"
        return found.errors[0].splitlines()[0][:100] if found.errors else "no runs"

    lines = [
        "## Single bot: Memoh's Go migrator vs memoh-trio, both into Memoh's Go server",
        "",
        "Whole-process wall time (interpreter/program start included), medians of this run; "
        "ratio = Go time / memoh-trio time (above 1: memoh-trio is faster). In-process: "
        "memoh-trio as a library (`benchmarks/memoh_client.py`: connect + migrate + rename, "
        "imports excluded) into the same server. CPU: client + server (with the commands the "
        "server ran for Exec), medians; both ends share this machine's cores, so a contender "
        "cannot finish faster than its CPU seconds divided by the cores. Go + sync: the Go "
        "migrator followed by `sync`, whole process: as durable as memoh-trio's copy, which "
        "syncs before it renames the source (the Go migrator renames without it; the targets "
        "are against the Go migrator alone).",
        "",
        "| scenario | Memoh Go migrator s | memoh-trio CLI s | ratio | target | result "
        "| memoh-trio in-process s | ratio in-process | CPU s: Go / CLI | Go + sync s "
        "| ratio vs Go + sync |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]

    def cpu(s: str, c: str) -> str:
        client, server = secs(s, c, "client_cpu"), secs(s, c, "server_cpu")
        return "-" if client is None or server is None else f"{client + server:.2f}"

    for s, goal in GO_TARGETS.items():
        if s not in cells:
            continue
        go, cli, lib = secs(s, "go-seed"), secs(s, "cli@go"), secs(s, "memoh@go")
        durable = secs(s, "go-seed+sync")
        ratio = go / cli if go and cli else None
        verdict = "-" if ratio is None else ("PASS" if ratio >= goal else "MISS")
        if smoke and ratio is not None:
            verdict += " (smoke)"
        go_s = _fmt(go, 3) if go else why(s, "go-seed")
        cli_s = _fmt(cli, 3) if cli else why(s, "cli@go")
        lines.append(
            f"| ({s}) {scenarios.title(s, smoke)} | {go_s} | {cli_s} "
            f"| {_fmt(ratio, 2) + 'x' if ratio else '-'} | >= {goal}x | {verdict} "
            f"| {_fmt(lib, 3) if lib else why(s, 'memoh@go')} "
            f"| {_fmt(go / lib, 2) + 'x' if go and lib else '-'} "
            f"| {cpu(s, 'go-seed')} / {cpu(s, 'cli@go')} "
            f"| {_fmt(durable, 3) if durable else why(s, 'go-seed+sync')} "
            f"| {_fmt(durable / cli, 2) + 'x' if durable and cli else '-'} |")
    if "e" in cells:
        e = cell("e", "cli@go")
        rss = e.peak("client_rss") if e is not None else None
        go, cli = secs("e", "go-seed"), secs("e", "cli@go")
        verdict = "-" if not rss else ("PASS" if rss <= GO_RSS_MIB * MiB else "MISS")
        lines.append(
            f"| ({'e'}) {scenarios.title('e', smoke)}: memoh-trio CLI peak RSS "
            f"| {_fmt(go, 3) if go else why('e', 'go-seed')} "
            f"| {_fmt(cli, 3) if cli else why('e', 'cli@go')} "
            f"| {_fmt(go / cli, 2) + 'x' if go and cli else '-'} "
            f"| RSS <= {GO_RSS_MIB} MiB | {verdict}: {_mib(rss) if rss else '-'} MiB "
            f"| {_fmt(secs('e', 'memoh@go'), 3)} | - "
            f"| {cpu('e', 'go-seed')} / {cpu('e', 'cli@go')} "
            f"| {_fmt(secs('e', 'go-seed+sync'), 3)} | - |")
    lines.append("")
    return lines


def render_markdown(cells: dict[str, dict[str, Cell]], manifests: dict[str, scenarios.Manifest],
                    repeats: dict[str, int], contenders: Sequence[Contender], smoke: bool,
                    command: str, launcher: str, started: datetime.datetime,
                    elapsed: float, conditions: str = "not checked",
                    lead: Sequence[str] = ()) -> str:
    """The report. ``lead``: sections put before the single-bot tables (the fleet's, the
    headline of a ``--fleet`` run)."""
    lines: list[str] = []
    w = lines.append
    w("# memoh-trio benchmarks" + (" (smoke run: tiny trees, not a measurement)" if smoke else ""))
    w("")
    finished = started + datetime.timedelta(seconds=elapsed)
    w(f"- When: started {started:%Y-%m-%d %H:%M} UTC, finished {finished:%H:%M} UTC "
      f"({elapsed / 60:.1f} min); command: `{command}`")
    w(f"- Where: 127.0.0.1, both ends on this machine: {os.cpu_count()} cores "
      f"({platform.machine()}), Linux {platform.release()}, Python {platform.python_version()}; "
      f"{_versions()}")
    w(f"- Conditions at the start (`benchmarks/_conditions.py`): {conditions}")
    w(f"- memoh-trio server started with: {launcher}")
    w("- Each cell: median of the runs (peak RSS: the largest); MB = 10^6 bytes. Time is the "
      "client's connect + copy + final rename (interpreter start excluded), CPU seconds over the "
      "same region; server CPU from 'listening' to the client's exit, with the commands it ran "
      "for Exec (its waited-for children). Dirty pages are "
      "flushed (untimed `sync`) before every run, so no run pays for an earlier one's writes, "
      f"and outputs of {KEEP_ASIDE_MIN_FILES}+ files are deleted only at the end, so none "
      "pays for an earlier one's deletions (see `Trash` in run.py); "
      "memoh-trio's own `sync` before it renames the source is timed; memoh-trio is "
      "byte-compiled first (untimed), as `pip install` leaves it. Contenders are "
      "interleaved within each repetition; every destination was checked against the source "
      "(count and bytes" + ("; full content" if smoke else "") + ").")
    w("- 'vs seed' = throughput relative to the seed algorithm on the grpcio server, same run. "
      "'process s' = the client's whole process, start to exit; for whole-process contenders "
      f"({', '.join(sorted(WHOLE_PROCESS))}) 'seconds' is that time too.")
    w("")
    lines += lead
    lines += render_single_bot(cells, smoke)
    for key in cells:
        m = manifests[key]
        w(f"## ({key}) {scenarios.title(key, smoke)}: {m.files:,} files, "
          f"{m.bytes / 1e6:,.1f} MB, {repeats[key]} run{'s' if repeats[key] != 1 else ''}")
        w("")
        w("| contender | server | MB/s | files/s | seconds | process s | vs seed | client CPU s "
          "| server CPU s | client peak RSS MiB | server peak RSS MiB |")
        w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        seed = cells[key].get("seed")
        seed_t = seed.median("seconds") if seed and seed.runs else None
        for c in contenders:
            cell = cells[key].get(c.key)
            if cell is None:
                continue
            tp = throughput(cell)
            if tp is None:
                err = cell.errors[0].splitlines()[0] if cell.errors else "no runs"
                status = err if err.startswith("skipped") else f"FAILED: {err[:120]}"
                w(f"| {c.label} | {SERVER_LABELS[c.server]} | {status} | | | | | | | | |")
                continue
            t = cell.median("seconds")
            vs = f"{seed_t / t:.2f}x" if seed_t and t else "-"
            note = f" ({len(cell.errors)} failed)" if cell.errors else ""
            per_s = _fmt(tp[1], 0 if tp[1] >= 10 else 2)
            w(f"| {c.label}{note} | {SERVER_LABELS[c.server]} | {_fmt(tp[0])} | {per_s} "
              f"| {_fmt(t, 3)} | {_fmt(cell.median('wall'), 3)} | {vs} "
              f"| {_fmt(cell.median('client_cpu'), 2)} "
              f"| {_fmt(cell.median('server_cpu'), 2)} | {_mib(cell.peak('client_rss'))} "
              f"| {_mib(cell.peak('server_rss'))} |")
        w("")
    w("## Targets: ratios of medians within this run")
    w("")
    w("| target | measured | goal | result |")
    w("|---|---:|---:|---|")
    for target in evaluate_targets(cells, smoke):
        verdict = "-" if target.passed is None else ("PASS" if target.passed else "MISS")
        w(f"| {target.name} | {target.measured} | {target.goal} | {verdict} |")
    w("")
    failures = [(k, ck, e) for k, row in cells.items() for ck, cell in row.items()
                for e in cell.errors if not e.startswith("skipped")]
    if failures:
        w("## Failed runs")
        w("")
        for k, ck, e in failures:
            w(f"- ({k}) {ck}: " + e.replace("\n", " / ")[:600])
        w("")
    return "\n".join(lines)


def _versions() -> str:
    from importlib import metadata

    parts = []
    for name in ("grpcio", "grpclib", "h2", "trio", "memoh-trio"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            parts.append(f"{name} {metadata.version(name)}")
    return ", ".join(parts)


def chart_series(contenders: Sequence[Contender]) -> list[_chart.Series]:
    """The contenders as the chart names them."""
    return [_chart.Series(c.key, c.label, c.server, SERVER_LABELS[c.server],
                          c.key in WHOLE_PROCESS) for c in contenders]


def chart_data(cells: dict[str, dict[str, Cell]], contenders: Sequence[Contender],
               smoke: bool) -> _chart.ChartData:
    """The chart's data from this run's cells: medians, or why a cell has none."""
    data = _chart.ChartData(smoke=smoke, series=chart_series(contenders))
    for key, row in cells.items():
        data.titles[key] = scenarios.title(key, smoke)
        points = data.points.setdefault(key, {})
        for c in contenders:
            cell = row.get(c.key)
            if cell is None:
                continue
            tp = throughput(cell)
            if tp is None:
                skipped = bool(cell.errors) and cell.errors[0].startswith("skipped")
                points[c.key] = _chart.Point(why="skipped" if skipped else "failed")
            else:
                points[c.key] = _chart.Point(cell.median("seconds"), tp[0], tp[1])
    return data


def render_chart(cells: dict[str, dict[str, Cell]], contenders: Sequence[Contender],
                 smoke: bool, path: Path) -> None:
    _chart.render(chart_data(cells, contenders, smoke), GO_TARGETS, path)


def replot(report: Path, out: Path | None) -> Path:
    """Redraw the chart of a report ``run.py`` wrote (no benchmark runs): ``latest.png``
    beside it, or in ``out``."""
    data = _chart.read_report(report.read_text(), chart_series(CONTENDERS))
    path = (out or report.parent) / report.with_suffix(".png").name
    _chart.render(data, GO_TARGETS, path)
    return path


def results_dir(*, publish: bool, out: Path | None, smoke: bool, subset: bool) -> Path | None:
    """Where a run writes ``latest.md`` and ``latest.png``: ``out`` if given; the published
    ``benchmarks/results/`` for a full run or when asked (``--publish``); else None, a new
    temporary directory, so a subset or smoke run never replaces the published figures."""
    if out is not None:
        return out
    if publish or not (smoke or subset):
        return RESULTS
    return None


# ----------------------------------------------------------------------------------------------
# Profiling


def profile(keys: Sequence[str], smoke: bool, cache: Path, out: Path) -> None:
    """Run memoh-trio's client and server under cProfile on each scenario; print the hot spots."""
    import pstats

    out.mkdir(parents=True, exist_ok=True)
    servers = Servers(profile_dir=out)
    contender = next(c for c in CONTENDERS if c.key == "memoh")
    for key in keys:
        src, manifest = scenarios.ensure(cache, key, smoke)
        _warm(src)
        client_prof = out / f"client-{key}.prof"
        with tempfile.TemporaryDirectory(dir=cache) as work:
            r = run_once(contender, src, manifest, Path(work), servers, full_check=False,
                         extra=["--profile", str(client_prof)])
        server_prof = out / f"server-{servers.profiles}.prof"
        server_prof.rename(out / f"server-{key}.prof")
        print(f"\n=== ({key}) {scenarios.title(key, smoke)}: {r.seconds:.3f} s under cProfile, "
              f"client CPU {r.client_cpu:.2f} s, server CPU {r.server_cpu or 0:.2f} s")
        for side in ("client", "server"):
            prof = out / f"{side}-{key}.prof"
            print(f"--- {side}: top functions by own time ({prof})")
            pstats.Stats(str(prof)).sort_stats("tottime").print_stats(25)


# ----------------------------------------------------------------------------------------------
# Main


def _parse_repeat_for(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in filter(None, text.split(",")):
        key, _, n = part.partition("=")
        out[key.strip()] = int(n)
    return out


def _run_all(keys: Sequence[str], contenders: list[Contender], skip: set[str],
             repeats: dict[str, int], cache: Path, cells: dict[str, dict[str, Cell]],
             manifests: dict[str, scenarios.Manifest], servers: Servers, trash: Trash, *,
             smoke: bool) -> bool:
    """Every scenario and contender, interleaved; fills ``cells``. True if a run failed."""
    failed = False
    go_missing = memoh_go_missing() if any(c.server == "go" for c in contenders) else None
    if go_missing:
        print(go_missing, flush=True)
    for key in keys:
        t_gen = time.perf_counter()
        src, manifest = scenarios.ensure(cache, key, smoke)
        _warm(src)
        manifests[key] = manifest
        print(f"({key}) {scenarios.title(key, smoke)}: {manifest.files:,} files, "
              f"{manifest.bytes / 1e6:,.1f} MB (ready in {time.perf_counter() - t_gen:.1f} s)",
              flush=True)
        row = cells.setdefault(key, {c.key: Cell() for c in contenders})
        for c in contenders:
            if f"{key}:{c.key}" in skip:
                row[c.key].errors.append("skipped (--skip) to keep the run's time in budget")
            elif c.server == "go" and go_missing:
                row[c.key].errors.append(go_missing)
        with tempfile.TemporaryDirectory(prefix="work-", dir=cache) as work:
            for rep in range(repeats[key]):
                order = contenders[rep % len(contenders):] + contenders[:rep % len(contenders)]
                for c in order:
                    if f"{key}:{c.key}" in skip or (c.server == "go" and go_missing):
                        continue
                    try:
                        r = run_once(c, src, manifest, Path(work), servers,
                                     full_check=smoke, trash=trash)
                    except Exception as exc:  # one broken contender must not hide the others
                        failed = True
                        row[c.key].errors.append(f"{type(exc).__name__}: {exc}")
                        print(f"  {c.key:<13} run {rep + 1}: FAILED {exc}", flush=True)
                        continue
                    row[c.key].runs.append(r)
                    print(f"  {c.key:<13} run {rep + 1}: {r.seconds:8.3f} s "
                          f"{r.bytes / r.seconds / 1e6:9.1f} MB/s {r.files / r.seconds:9.0f} "
                          f"files/s", flush=True)
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny trees, 1 repetition, results in a temporary directory")
    ap.add_argument("--scenarios", default=",".join(scenarios.SCENARIOS),
                    help="comma-separated scenario keys (default: all of a,b,c,d,e)")
    ap.add_argument("--contenders", default=",".join(c.key for c in CONTENDERS),
                    help="comma-separated contender keys (default: all)")
    ap.add_argument("--repeat", type=int, default=None, help="runs per cell (default 3; smoke 1)")
    ap.add_argument("--repeat-for", type=_parse_repeat_for, default={},
                    help="per-scenario repetitions, e.g. d=1,e=1")
    ap.add_argument("--skip", default="",
                    help="cells to leave out, e.g. d:memoh-c1,e:memoh-c1 (shown as skipped)")
    ap.add_argument("--out", type=Path, help="directory for latest.md and latest.png "
                    "(default: benchmarks/results for a full run, a new temporary directory "
                    "for a subset or a smoke run)")
    ap.add_argument("--publish", action="store_true",
                    help="write a subset's report into benchmarks/results (the published "
                         "figures) all the same")
    ap.add_argument("--replot", type=Path, metavar="REPORT.md",
                    help="run nothing: redraw the chart of a report run.py wrote, beside it "
                         "(or in --out)")
    ap.add_argument("--settle", type=float, default=360.0, metavar="SECONDS",
                    help="wait at most this long for file creation to settle after recent "
                         "deletions before measuring (default 360; smoke runs: 0)")
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(os.environ.get("MEMOH_BENCH_CACHE",
                                                Path.home() / ".cache" / "memoh-trio-bench")),
                    help="where generated trees are kept between runs")
    ap.add_argument("--no-startup", dest="startup", action="store_false",
                    help="leave out the startup table (benchmarks/startup.py)")
    ap.add_argument("--fleet", action="store_true",
                    help="also run the fleet scenario (issue 25, benchmarks/fleet.py): "
                         f"{fleet.FLEET_BOTS} bots at once ({fleet.SMOKE_BOTS} with --smoke), "
                         "--repeat rounds")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="instead of benchmarking, cProfile memoh-trio's client and server")
    args = ap.parse_args(argv)
    if args.publish and (args.out is not None or args.smoke):
        ap.error("--publish writes benchmarks/results: not with --out, nor with --smoke "
                 "(tiny trees, not a measurement)")
    if args.replot is not None:
        print(f"wrote {replot(args.replot, args.out)}")
        return 0

    keys = [k.strip() for k in args.scenarios.split(",") if k.strip()]
    unknown = [k for k in keys if k not in scenarios.SCENARIOS]
    wanted = [k.strip() for k in args.contenders.split(",") if k.strip()]
    bad = [k for k in wanted if k not in {c.key for c in CONTENDERS}]
    if unknown or bad:
        ap.error(f"unknown scenario(s) {unknown} or contender(s) {bad}")
    contenders = [c for c in CONTENDERS if c.key in wanted]
    cache: Path = args.cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    if args.profile is not None:
        profile(keys, args.smoke, cache, args.profile)
        return 0

    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    repeat = args.repeat if args.repeat is not None else (1 if args.smoke else 3)
    repeats = {k: args.repeat_for.get(k, repeat) for k in keys}
    subset = (set(keys) != set(scenarios.SCENARIOS)
              or {c.key for c in contenders} != {c.key for c in CONTENDERS})
    chosen = results_dir(publish=args.publish, out=args.out, smoke=args.smoke, subset=subset)
    # A temporary directory is kept, so the table can be read afterwards.
    out = chosen or Path(tempfile.mkdtemp(prefix="memoh-trio-bench-"
                                          + ("smoke-" if args.smoke else "subset-")))
    out.mkdir(parents=True, exist_ok=True)

    no_room = check_disk(disk_needed(keys, contenders, skip, repeats, cache, args.smoke), cache)
    if no_room is not None:
        print(no_room, file=sys.stderr)
        return EXIT_NO_ROOM
    compile_package()
    started = datetime.datetime.now(datetime.UTC)
    t_start = time.perf_counter()
    # Before the scenarios: their outputs' deletion at the end would slow every process start.
    startup_repeat = 3 if args.smoke else 10
    startup_rows = startup.measure(startup_repeat)[0] if args.startup else []
    servers = Servers()
    cells: dict[str, dict[str, Cell]] = {}
    manifests: dict[str, scenarios.Manifest] = {}
    for stale in cache.glob("trash-*"):  # left by a harness that was killed
        _rmtree(stale)
    trash = Trash(cache)
    found = _conditions.settle(cache, trash.put, 0.0 if args.smoke else args.settle)
    print(f"conditions: {found.describe()}", flush=True)
    try:
        failed = _run_all(keys, contenders, skip, repeats, cache, cells, manifests, servers,
                          trash, smoke=args.smoke)
        fleet_lines: list[str] = []
        if args.fleet:
            fleet_lines, fleet_failed = fleet.section(cache, smoke=args.smoke, rounds=repeat)
            failed = failed or fleet_failed
    finally:
        if trash.count:
            print(f"removing the {trash.count} run outputs kept aside (untimed)", flush=True)
        trash.empty()

    command = " ".join(["python benchmarks/run.py",
                        *(sys.argv[1:] if argv is None else argv)])
    md = render_markdown(cells, manifests, repeats, contenders, args.smoke, command,
                         servers.memoh_launcher if servers.memoh_launcher != "cli"
                         else "`python -m memoh_trio serve --root DIR --listen 127.0.0.1:0`",
                         started, time.perf_counter() - t_start, found.describe(),
                         lead=fleet_lines)
    if startup_rows:
        md += "\n" + "\n".join(startup.render(startup_rows, startup_repeat))
    (out / "latest.md").write_text(md + "\n")
    render_chart(cells, contenders, args.smoke, out / "latest.png")
    print(md)
    print(f"\nwrote {out / 'latest.md'} and {out / 'latest.png'}")
    if chosen is None:
        print(f"(not {RESULTS}: a {'smoke' if args.smoke else 'subset'} run; "
              "--publish writes there)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
