"""The fleet scenario (issue 25): every bot migrates at once, each into its own container.

    python -m benchmarks.fleet                    # 40 bots, 3 rounds, all contenders
    python -m benchmarks.fleet --smoke            # 3 bots of a few files, 1 round
    python benchmarks/run.py --fleet ...          # the same section in run.py's report

Memoh migrates a whole fleet in one process after an upgrade (``Manager.Start`` launches
``go m.migrateBindMountData(ctx, botID)`` for each bot it starts), each bot into its own container,
every container listening on the same port at its own IP. Here: one Memoh Go server per bot
(``memoh-go-server``) under ``../shared/containers/run-in.sh busybox-python`` (Memoh's bot image:
busybox tools + python3) on 127.0.0.2, 127.0.0.3, ... with one port, each over its own fresh root.

The tree (per bot, 356 files, ~12 MB): 300 session JSON files of 0.2-6 KB in 30
``sessions/<uuid>/`` directories, 50 memory notes, a 6 MiB database, 4 media files of
0.3-2 MiB and a config file.

Contenders, interleaved round by round, each on fresh roots:

- ``go-fleet``: Memoh's fleet migrator, ``memoh-go-fleet DATA_ROOT TARGETS.json`` (unchanged code);
- ``go-fleet+sync``: the same, then ``sync`` (timed: as durable as memoh-trio's copy);
- ``cli``: ``memoh-trio migrate-all --data-root DATA_ROOT --targets TARGETS.json`` (whole process,
  defaults);
- ``lib``: the library's ``migrate_all`` in process (``benchmarks/fleet_client.py``; imports and
  interpreter start excluded);
- ``cli-no-agent``: ``memoh-trio migrate-all ... --no-agent`` (whole process): a process in the
  container per step (python3 or the shell) instead of the container agent, side by side with
  the default in the same run.

Measured per run: wall time; client CPU (``wait4``; the in-process contender its timed region);
each server's own CPU and its reaped children's (the commands its Exec ran in the container) from
``/proc/PID/stat`` between "listening" and the client's exit; peak RSS of the client and of the
largest server; every bot renamed and every file identical (full content). After the rounds, one
bot's phases: ``migrate_bot`` alone into one such server, every RPC timed, with the same CPU split.
No speed is asserted anywhere: the lead engineer runs this on a quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(REPO))

from benchmarks import scenarios  # noqa: E402
from benchmarks._measure import parse_result  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
PY = sys.executable
#: Bots in the full fleet and in the smoke fleet.
FLEET_BOTS = 40
SMOKE_BOTS = 3
#: Bumped whenever the generator changes (stale caches are regenerated).
FLEET_VERSION = 1
#: The fleet's section title: with ``run.py --fleet`` it leads the report, as the headline.
FLEET_TITLE = "Headline: the fleet, every bot at once, each into its own Memoh Go server"
MEMOH_GO_DIR = Path(os.environ.get("MEMOH_GO_OUT", "/tmp/memoh-go"))
MEMOH_GO_SERVER = MEMOH_GO_DIR / "memoh-go-server"
MEMOH_GO_FLEET = MEMOH_GO_DIR / "memoh-go-fleet"
_SHARED = REPO.parent / "shared"
if not _SHARED.exists():  # a worktree one level deeper
    _SHARED = REPO.parent.parent / "shared"
RUN_IN = _SHARED / "containers" / "run-in.sh"
CONTAINER_KIND = "busybox-python"
LISTEN_TIMEOUT = 30.0


# ----------------------------------------------------------------------------------------------
# The tree


def bot_layout(bot: int, smoke: bool) -> Iterator[tuple[str, int]]:
    """``(relative path, size)`` of every file of bot number ``bot`` (deterministic)."""
    import random

    rng = random.Random(1000 + bot)
    dirs, per_dir, notes = (2, 3, 3) if smoke else (30, 10, 50)
    for _ in range(dirs):
        sid = uuid.UUID(int=rng.getrandbits(128), version=4)
        for i in range(per_dir):
            yield f"sessions/{sid}/msg-{i:04d}.json", rng.randint(200, 6000)
    for i in range(notes):
        yield f"memory/note-{i:03d}.md", rng.randint(200, 6000)
    yield "db/bot.sqlite", 64 * KiB if smoke else 6 * MiB
    for i in range(1 if smoke else 4):
        size = rng.randint(300 * KiB, 2 * MiB) // (32 if smoke else 1)
        yield f"media/att-{i:02d}.{('png', 'jpg', 'ogg', 'pdf')[i]}", size
    yield "config.json", rng.randint(500, 1500)


def bot_ids(count: int) -> list[str]:
    return [f"bot-{i:03d}" for i in range(count)]


@dataclass(frozen=True)
class Fleet:
    """A generated fleet: ``data_root/bots/<id>`` per bot, and what each must contain."""

    data_root: Path
    bots: dict[str, tuple[int, int]]  # bot id -> (files, bytes)

    @property
    def files(self) -> int:
        return sum(f for f, _ in self.bots.values())

    @property
    def bytes(self) -> int:
        return sum(b for _, b in self.bots.values())

    def src(self, bot: str) -> Path:
        return self.data_root / "bots" / bot

    def restore(self) -> None:
        """Undo the final renames of a run (``<id>.migrated`` -> ``<id>``)."""
        for bot in self.bots:
            scenarios.restore_source(self.src(bot))


def fleet_dir(cache: Path, count: int, smoke: bool) -> Path:
    return cache / f"fleet-v{FLEET_VERSION}" / (f"{count}-smoke" if smoke else str(count))


def ensure_fleet(cache: Path, count: int, smoke: bool) -> Fleet:
    """Generate the fleet under ``cache`` unless a complete copy is there (atomic: complete or
    absent under its final name)."""
    top = fleet_dir(cache, count, smoke)
    manifest = top / "manifest.json"
    if manifest.exists():
        fleet = Fleet(top, {k: (v[0], v[1]) for k, v in json.loads(manifest.read_text()).items()})
        fleet.restore()
        if all(fleet.src(b).is_dir() for b in fleet.bots):
            return fleet
    if top.exists():
        shutil.rmtree(top)
    building = top.with_name(top.name + ".building")
    if building.exists():
        shutil.rmtree(building)
    bots: dict[str, tuple[int, int]] = {}
    for n, bot in enumerate(bot_ids(count)):
        content = scenarios._Content(seed=7919 * (n + 1))
        files = total = 0
        for rel, size in bot_layout(n, smoke):
            path = building / "bots" / bot / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            content.write(path, size)
            files += 1
            total += size
        bots[bot] = (files, total)
    (building / "manifest.json").write_text(json.dumps(bots))
    os.replace(building, top)
    return Fleet(top, bots)


# ----------------------------------------------------------------------------------------------
# Processes


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(own CPU seconds, CPU seconds of its waited-for children) of a live process: utime +
    stime, and cutime + cstime (a child's own reaped children roll up into its figures when it
    is reaped, so the commands an Exec's ``sh`` ran are in there too)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def proc_peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def free_port(host: str = "127.0.0.2") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def container_argv(kind: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run so that its Exec sees a kind of container (``run-in.sh KIND``)."""
    return ["bash", str(RUN_IN), kind, *argv]


class Server:
    """One server process that printed ``listening on HOST:PORT`` (its PID is the server's:
    run-in.sh execs it)."""

    def __init__(self, argv: Sequence[str], log: IO[bytes]) -> None:
        self.proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=log,
                                     start_new_session=True)
        self.log = log
        self.target = ""
        self.cpu0 = (0.0, 0.0)

    def await_listening(self, deadline: float) -> None:
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), True)
        import select

        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not ready:
                raise RuntimeError("server did not print 'listening on' in time")
            data = os.read(self.proc.stdout.fileno(), 4096)
            if not data:
                raise RuntimeError(f"server exited before listening: {self.stderr()}")
            buf += data
        line = buf.split(b"\n", 1)[0].decode()
        self.target = line.rpartition("listening on ")[2].split()[0]
        self.cpu0 = proc_cpu_split(self.proc.pid)

    def usage(self) -> tuple[float, float, int]:
        """(own CPU s, children's CPU s) since listening, and peak RSS bytes."""
        own, kids = proc_cpu_split(self.proc.pid)
        return own - self.cpu0[0], kids - self.cpu0[1], proc_peak_rss(self.proc.pid)

    def stderr(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def fleet_servers(roots: dict[str, Path], kind: str = CONTAINER_KIND,
                  attempts: int = 5) -> Iterator[dict[str, Server]]:
    """One Memoh Go server per bot, bot ``n`` on ``127.0.0.<n + 2>``, all on one port."""
    for attempt in range(attempts):
        port = free_port()
        with contextlib.ExitStack() as stack:
            servers: dict[str, Server] = {}
            try:
                for n, (bot, root) in enumerate(roots.items()):
                    log = stack.enter_context(tempfile.TemporaryFile())
                    argv = [str(MEMOH_GO_SERVER), "--root", str(root),
                            "--listen", f"127.0.0.{n + 2}:{port}"]
                    server = Server(container_argv(kind, argv), log)
                    stack.callback(server.stop)
                    servers[bot] = server
                deadline = time.monotonic() + LISTEN_TIMEOUT
                for server in servers.values():
                    server.await_listening(deadline)
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                continue  # the port was taken on one of the addresses: another port
            yield servers
            return
    raise AssertionError("unreachable")


def missing() -> str | None:
    """Why the fleet cannot run here (None: it can)."""
    bins = [p.name for p in (MEMOH_GO_SERVER, MEMOH_GO_FLEET) if not os.access(p, os.X_OK)]
    if bins:
        return (f"skipped: Memoh's Go binaries not built ({', '.join(bins)} missing in "
                f"{MEMOH_GO_DIR}; run ../shared/memoh-go/build.sh --install)")
    if not RUN_IN.exists():
        return f"skipped: {RUN_IN} not found"
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "skipped: run-in.sh busybox-python needs root and util-linux unshare"
    return None


# ----------------------------------------------------------------------------------------------
# Contenders


@dataclass(frozen=True)
class FleetContender:
    key: str
    label: str
    then_sync: bool = False  # a timed ``sync`` after the client exits

    def argv(self, data_root: Path, targets: Path) -> list[str]:
        if self.key.startswith("go-fleet"):
            return [str(MEMOH_GO_FLEET), str(data_root), str(targets)]
        if self.key in ("cli", "cli-no-agent"):
            script = Path(PY).parent / "memoh-trio"
            launcher = [str(script)] if script.exists() else [PY, "-m", "memoh_trio"]
            return [*launcher, "migrate-all", "--data-root", str(data_root),
                    "--targets", str(targets), "--json",
                    *(["--no-agent"] if self.key == "cli-no-agent" else [])]
        if self.key == "lib":
            return [PY, "-m", "benchmarks.fleet_client", "--data-root", str(data_root),
                    "--targets", str(targets)]
        raise ValueError(self.key)


CONTENDERS: tuple[FleetContender, ...] = (
    FleetContender("go-fleet", "Memoh Go fleet migrator"),
    FleetContender("go-fleet+sync", "Memoh Go fleet migrator, then sync", then_sync=True),
    FleetContender("cli", "memoh-trio migrate-all (whole process)"),
    FleetContender("lib", "memoh-trio migrate_all (in process)"),
    # The same without the container agent (a process per container step), for comparison;
    # no target is taken from it.
    FleetContender("cli-no-agent", "memoh-trio migrate-all --no-agent (whole process)"),
)
#: Contenders timed as whole processes (the others report their timed region).
WHOLE_PROCESS = {"go-fleet", "go-fleet+sync", "cli", "cli-no-agent"}


@dataclass
class FleetRun:
    wall: float  # what the row shows: whole process, or the in-process timed region
    process_wall: float
    client_cpu: float
    client_rss: int
    server_cpu: float  # the servers' own CPU, all bots
    container_cpu: float  # their reaped children's (Exec's commands), all bots
    server_rss: int  # the largest server's peak
    bots: int
    renamed: int

    @property
    def total_cpu(self) -> float:
        return self.client_cpu + self.server_cpu + self.container_cpu


@dataclass
class FleetCell:
    runs: list[FleetRun] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self, attr: str) -> float | None:
        values = [float(getattr(r, attr)) for r in self.runs]
        return statistics.median(values) if values else None

    def peak(self, attr: str) -> int | None:
        values = [int(getattr(r, attr)) for r in self.runs]
        return max(values) if values else None


def check_fleet(fleet: Fleet, roots: dict[str, Path]) -> list[str]:
    """What is wrong after a run: bots not renamed, files missing or different (full content)."""
    problems: list[str] = []
    for bot, root in roots.items():
        src = fleet.src(bot)
        migrated = src.with_name(src.name + ".migrated")
        if not migrated.is_dir() or src.exists():
            problems.append(f"{bot}: not renamed")
            continue
        bad = scenarios.same_content(migrated, root)
        if bad:
            problems.append(f"{bot}: {len(bad)} files differ, e.g. {bad[:2]}")
    return problems


def run_fleet_once(c: FleetContender, fleet: Fleet, work: Path, timeout: float,
                   dest: Path) -> FleetRun:
    """One contender over the whole fleet, on fresh roots under ``dest`` and fresh servers.

    ``dest`` is left for the caller to delete after every run (see ``benchmarks.run.Trash``:
    deleting ~14,000 files slows the file creation of the runs that follow)."""
    from benchmarks.run import run_client  # the harness's client runner (wait4, RSS polling)

    roots = {bot: dest / bot for bot in fleet.bots}
    for root in roots.values():
        root.mkdir(parents=True)
    os.sync()  # untimed: nobody pays for an earlier run's dirty pages
    try:
        with fleet_servers(roots) as servers:
            targets = work / "targets.json"
            targets.write_text(json.dumps({b: s.target for b, s in servers.items()}))
            outcome = run_client(c.argv(fleet.data_root, targets), timeout)
            sync_wall = sync_cpu = 0.0
            if c.then_sync and outcome.rc == 0:
                t0, ru0 = time.perf_counter(), os.times()
                subprocess.run(["sync"], check=True)
                ru1 = os.times()
                sync_wall = time.perf_counter() - t0
                sync_cpu = (ru1.children_user - ru0.children_user
                            + ru1.children_system - ru0.children_system)
            usage = {b: s.usage() for b, s in servers.items()}
            dead = [b for b, s in servers.items() if s.proc.poll() is not None]
            if dead:
                raise RuntimeError(f"server of {dead[0]} died: {servers[dead[0]].stderr()}")
        if outcome.rc != 0:
            raise RuntimeError(f"client exit {outcome.rc}: {outcome.stderr[-1500:]}"
                               f"{outcome.stdout[-800:]}")
        problems = check_fleet(fleet, roots)
        if problems:
            raise RuntimeError("; ".join(problems[:5]))
        result = parse_result(outcome.stdout) or {}
        renamed = sum(fleet.src(b).with_name(b + ".migrated").is_dir() for b in fleet.bots)
    finally:
        fleet.restore()
    wall = outcome.wall + sync_wall
    return FleetRun(
        wall=wall if c.key in WHOLE_PROCESS else float(result.get("seconds", wall)),
        process_wall=wall,
        client_cpu=float(result.get("cpu", outcome.cpu)) + sync_cpu,
        client_rss=int(result.get("peak_rss") or outcome.peak_rss),
        server_cpu=sum(u[0] for u in usage.values()),
        container_cpu=sum(u[1] for u in usage.values()),
        server_rss=max(u[2] for u in usage.values()),
        bots=len(fleet.bots), renamed=renamed,
    )


# ----------------------------------------------------------------------------------------------
# One bot's phases


def one_bot_phases(fleet: Fleet, work: Path) -> dict[str, Any]:
    """``migrate_bot`` of the first bot alone into one server under busybox+python3, every RPC
    timed (``benchmarks/fleet_client.py --phases``), with the CPU split of both sides."""
    from benchmarks.run import run_client

    bot = next(iter(fleet.bots))
    root = work / "phases-root"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    os.sync()
    try:
        with fleet_servers({bot: root}) as servers:
            server = servers[bot]
            outcome = run_client([PY, "-m", "benchmarks.fleet_client", "--data-root",
                                  str(fleet.data_root), "--phases", bot,
                                  "--target", server.target], 120.0)
            own, kids, rss = server.usage()
        if outcome.rc != 0:
            raise RuntimeError(f"phases: client exit {outcome.rc}: {outcome.stderr[-1500:]}")
        result = parse_result(outcome.stdout) or {}
    finally:
        fleet.restore()
        shutil.rmtree(root, ignore_errors=True)
    result.update(bot=bot, server_cpu=own, container_cpu=kids, server_rss=rss,
                  process_wall=outcome.wall, process_cpu=outcome.cpu)
    return result


# ----------------------------------------------------------------------------------------------
# Rounds and the report


def run_rounds(cache: Path, *, bots: int, smoke: bool, rounds: int,
               contenders: Sequence[FleetContender] = CONTENDERS,
               phases: bool = True) -> tuple[Fleet | None, dict[str, FleetCell],
                                             dict[str, Any] | None, str | None]:
    """Every contender ``rounds`` times, interleaved (each round starts with the next one).

    Returns the fleet, the cells, one bot's phases and why nothing ran (None: it ran)."""
    why = missing()
    cells = {c.key: FleetCell() for c in contenders}
    if why is not None:
        for cell in cells.values():
            cell.errors.append(why)
        return None, cells, None, why
    from benchmarks.run import _warm, check_disk

    per_copy = sum(scenarios.layout_disk_size(bot_layout(n, smoke))[1] for n in range(bots))
    generated = (fleet_dir(cache, bots, smoke) / "manifest.json").exists()
    no_room = check_disk(per_copy * (rounds * len(contenders) + 1 + (not generated)), cache)
    if no_room is not None:
        for cell in cells.values():
            cell.errors.append(no_room)
        return None, cells, None, no_room
    fleet = ensure_fleet(cache, bots, smoke)
    _warm(fleet.data_root)  # untimed: no contender pays for a cold page cache
    print(f"fleet: {len(fleet.bots)} bots, {fleet.files:,} files, {fleet.bytes / 1e6:,.1f} MB",
          flush=True)
    timeout = 300.0 + fleet.bytes / 2e6
    order = list(contenders)
    phase: dict[str, Any] | None = None
    # Every run's output stays in ``work`` until the end (deleted with it, untimed).
    with tempfile.TemporaryDirectory(prefix="fleet-", dir=cache) as tmp:
        work = Path(tmp)
        for r in range(rounds):
            for c in order[r % len(order):] + order[:r % len(order)]:
                try:
                    run = run_fleet_once(c, fleet, work, timeout, work / f"dest-{c.key}-{r}")
                except Exception as exc:  # one broken contender must not hide the others
                    cells[c.key].errors.append(f"{type(exc).__name__}: {exc}")
                    print(f"  fleet {c.key:<14} run {r + 1}: FAILED {exc}", flush=True)
                    continue
                cells[c.key].runs.append(run)
                print(f"  fleet {c.key:<14} run {r + 1}: {run.wall:7.3f} s, CPU client "
                      f"{run.client_cpu:.2f} + servers {run.server_cpu:.2f} + container "
                      f"{run.container_cpu:.2f} s, {run.renamed}/{run.bots} renamed", flush=True)
        if phases:
            try:
                phase = one_bot_phases(fleet, work)
            except Exception as exc:
                phase = {"error": f"{type(exc).__name__}: {exc}"}
    return fleet, cells, phase, None


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render(fleet: Fleet | None, cells: dict[str, FleetCell], phase: dict[str, Any] | None,
           why: str | None, *, smoke: bool, rounds: int) -> list[str]:
    """The fleet section of the report (markdown lines)."""
    out = [f"## {FLEET_TITLE}", ""]
    if why is not None or fleet is None:
        return [*out, f"Not run: {why}", ""]
    n = len(fleet.bots)
    out += [
        f"{n} bots{' (smoke)' if smoke else ''}, {fleet.files:,} files, "
        f"{fleet.bytes / 1e6:,.1f} MB; each bot into its own `memoh-go-server` under "
        f"`run-in.sh {CONTAINER_KIND}` on 127.0.0.2.. with one port; {rounds} round"
        f"{'s' if rounds != 1 else ''}, contenders interleaved, medians (peak RSS: largest). "
        "Wall: the whole process (memoh-trio in process: its timed region). CPU from the "
        "client's rusage and each server's /proc stat between 'listening' and the client's exit: "
        "'servers' is the servers' own CPU, 'container' their reaped children's (every command "
        "Exec ran: sh, tar, python3, sync...). Every bot renamed and every file identical "
        "(checked in full) in every counted run.",
        "",
        "| contender | wall s | client CPU s | servers CPU s | container CPU s | total CPU s "
        "| client peak RSS MiB | server peak RSS MiB | renamed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in CONTENDERS:
        cell = cells.get(c.key)
        if cell is None:
            continue
        if not cell.runs:
            err = cell.errors[0].splitlines()[0][:160] if cell.errors else "no runs"
            out.append(f"| {c.label} | FAILED: {err} | | | | | | | |")
            continue
        note = f" ({len(cell.errors)} failed)" if cell.errors else ""
        out.append(
            f"| {c.label}{note} | {_f(cell.median('wall'), 3)} | {_f(cell.median('client_cpu'))} "
            f"| {_f(cell.median('server_cpu'))} | {_f(cell.median('container_cpu'))} "
            f"| {_f(cell.median('total_cpu'))} | {(cell.peak('client_rss') or 0) / MiB:,.0f} "
            f"| {(cell.peak('server_rss') or 0) / MiB:,.0f} "
            f"| {min(r.renamed for r in cell.runs)}/{n} |")
    out += ["", "Per bot (medians / bots): where each side's CPU goes.", "",
            "| contender | client CPU ms/bot | server CPU ms/bot | container CPU ms/bot "
            "| total CPU ms/bot |", "|---|---:|---:|---:|---:|"]
    for c in CONTENDERS:
        cell = cells.get(c.key)
        if cell is None or not cell.runs:
            continue
        per = [1000 * (cell.median(a) or 0.0) / n
               for a in ("client_cpu", "server_cpu", "container_cpu", "total_cpu")]
        out.append(f"| {c.label} | " + " | ".join(f"{v:,.0f}" for v in per) + " |")
    out += ["", "Targets (issue 25), ratios of medians within this run:", "",
            "| target | measured | goal | result |", "|---|---:|---:|---|"]
    for name, measured, goal, passed in targets(cells):
        verdict = "-" if passed is None else ("PASS" if passed else "MISS")
        out.append(f"| {name} | {measured} | {goal} | {verdict}{' (smoke)' if smoke else ''} |")
    out += ["", *render_phases(phase), ""]
    return out


def targets(cells: dict[str, FleetCell]) -> list[tuple[str, str, str, bool | None]]:
    """Issue 25's fleet targets: (name, measured, goal, passed or None when not measured)."""
    def med(key: str, attr: str) -> float | None:
        cell = cells.get(key)
        return cell.median(attr) if cell is not None and cell.runs else None

    rows: list[tuple[str, str, str, bool | None]] = []
    for attr, name in (("wall", "fleet wall"), ("total_cpu", "fleet total CPU")):
        go, ours = med("go-fleet", attr), med("cli", attr)
        ratio = go / ours if go and ours else None
        rows.append((f"{name}: Go / memoh-trio migrate-all", _f(ratio) + "x" if ratio else
                     "not measured", ">= 2.0x", None if ratio is None else ratio >= 2.0))
    rss = cells["cli"].peak("client_rss") if "cli" in cells and cells["cli"].runs else None
    rows.append(("memoh-trio migrate-all peak RSS", f"{rss / MiB:,.0f} MiB" if rss else
                 "not measured", "<= 96 MiB", None if rss is None else rss <= 96 * MiB))
    return rows


def render_phases(phase: dict[str, Any] | None) -> list[str]:
    if not phase:
        return []
    if "error" in phase:
        return [f"One bot's phases: FAILED: {str(phase['error'])[:300]}"]
    lines = [
        f"One bot's phases ({phase.get('bot')}: `migrate_bot` alone, in process, into one such "
        f"server): {phase.get('seconds', 0):.3f} s; CPU client {phase.get('cpu', 0):.2f} s "
        f"(whole process {phase.get('process_cpu', 0):.2f} s), server "
        f"{phase.get('server_cpu', 0):.2f} s, container {phase.get('container_cpu', 0):.2f} s.",
        "", "| call | count | sum of durations s | first start s | last end s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in sorted(phase.get("calls", {}).items(), key=lambda kv: kv[1]["first"]):
        lines.append(f"| {name} | {row['count']} | {row['sum']:.3f} | {row['first']:.3f} "
                     f"| {row['last']:.3f} |")
    return lines


def section(cache: Path, *, smoke: bool, rounds: int, bots: int | None = None,
            contenders: Sequence[FleetContender] = CONTENDERS,
            phases: bool = True) -> tuple[list[str], bool]:
    """Run the fleet and render its section: ``(markdown lines, whether a run failed)``.
    Where it cannot run (Go binaries, run-in.sh), the section says why and nothing failed."""
    count = bots or (SMOKE_BOTS if smoke else FLEET_BOTS)
    fleet, cells, phase, why = run_rounds(cache, bots=count, smoke=smoke, rounds=rounds,
                                          contenders=contenders, phases=phases)
    failed = why is None and (any(cell.errors for cell in cells.values())
                              or bool(phase and "error" in phase))
    return render(fleet, cells, phase, why, smoke=smoke, rounds=rounds), failed


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help=f"{SMOKE_BOTS} bots of a few files")
    ap.add_argument("--bots", type=int, help=f"bots in the fleet (default {FLEET_BOTS}; "
                    f"smoke {SMOKE_BOTS})")
    ap.add_argument("--rounds", type=int, help="rounds (default 3; smoke 1)")
    ap.add_argument("--contenders", default=",".join(c.key for c in CONTENDERS))
    ap.add_argument("--no-phases", dest="phases", action="store_false")
    ap.add_argument("--settle", type=float, default=360.0, metavar="SECONDS",
                    help="wait at most this long for file creation to settle after recent "
                         "deletions (benchmarks/_conditions.py; default 360, smoke 0)")
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(os.environ.get("MEMOH_BENCH_CACHE",
                                                Path.home() / ".cache" / "memoh-trio-bench")))
    args = ap.parse_args(argv)
    wanted = [k.strip() for k in args.contenders.split(",") if k.strip()]
    bad = [k for k in wanted if k not in {c.key for c in CONTENDERS}]
    if bad:
        ap.error(f"unknown contender(s) {bad}")
    bots = args.bots or (SMOKE_BOTS if args.smoke else FLEET_BOTS)
    rounds = args.rounds or (1 if args.smoke else 3)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    from benchmarks import _conditions
    from benchmarks.run import Trash

    # As run.py does: ext4 without a journal passes over inodes freed in the last 60-300 s
    # when it allocates one, so a run started right after a mass deletion (tests, an earlier
    # run's outputs) pays for it in every file a server or the container agent creates.
    trash = Trash(args.cache_dir)
    try:
        found = _conditions.settle(args.cache_dir, trash.put, 0.0 if args.smoke else args.settle)
        print(f"conditions: {found.describe()}", flush=True)
        lines, failed = section(args.cache_dir, smoke=args.smoke, rounds=rounds, bots=bots,
                                contenders=[c for c in CONTENDERS if c.key in wanted],
                                phases=args.phases)
    finally:
        trash.empty()
    lines.insert(1, f"\nConditions at the start (`benchmarks/_conditions.py`): "
                    f"{found.describe()}")
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
