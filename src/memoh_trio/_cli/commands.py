"""The commands of ``memoh-trio``: each parses nothing and decides nothing itself; it calls the
library, draws progress from the library's progress state and prints the reports.

Imports are lazy: a command loads only what it uses (rich only to draw; the server modules only
for ``serve``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from .. import _errors as errors
from .._units import fill_target_template, parse_target
from .args import TOKEN_ENV, connect_kwargs, migrate_kwargs, resolve_token
from .exits import EXIT_INCOMPLETE, EXIT_OK


def print_error(message: str) -> None:
    print(f"memoh-trio: error: {message}", file=sys.stderr, flush=True)


class Session:
    """What one command has to say if it is stopped half-way or fails: the reports of what
    finished and of the sources still running or waiting (SIGINT/SIGTERM and ``--json`` errors
    print a partial report from this)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.start = time.monotonic()
        self.planned: list[tuple[str, str | None]] = []  # (source, bot_id) in report order
        self.finished: dict[str, Any] = {}  # source -> MigrationReport
        self.stopped: dict[str, Any] = {}  # source -> its MigrationReport as it was stopped
        self.progress: Any = None  # the Progress of the migration, or of the whole fleet
        self.signal_name: str | None = None
        self.display: Any = None  # the progress line (a LiveLine) while it is drawn
        self.client: Any = None  # the Client of migrate / migrate-bot, once connected
        self.console_script = False  # the process is ours: a second signal may exit at once

    def stop_display(self) -> None:
        """Erase the progress line for good (before a message of ours on stderr)."""
        if self.display is not None:
            self.display.stop()

    def partial_reports(self, error: str | None = None) -> list[Any]:
        """One report per planned source: finished ones as they are, the others incomplete with
        what they had confirmed and ``error`` (default: stopped by the signal received; a bot
        of a fleet that never started says so)."""
        from .._migrate import NOT_STARTED, STOPPED, stopped_report
        from .._progress import live_reports
        from .._report import MigrationReport

        signal = self.signal_name or "a signal"
        fleet = self.args.command == "migrate-all"
        elapsed = time.monotonic() - self.start
        running = {r.source for r in live_reports(self.progress)} if self.progress else set()
        out = []
        for source, bot_id in self.planned:
            report = self.finished.get(source)
            if report is not None:
                out.append(report)
                continue
            report = self.stopped.get(source)
            if report is None and (not fleet or source in running
                                   or os.path.realpath(source) in running):
                report = stopped_report(source, bot_id, self.progress, elapsed)
            if report is None:  # a bot of the fleet whose turn had not come
                why = error or NOT_STARTED.replace("the run was stopped", f"stopped by {signal}")
                out.append(MigrationReport(source=source, bot_id=bot_id, error=why))
                continue
            why = error or STOPPED.replace("stopped", f"stopped by {signal}")
            out.append(dataclasses.replace(report, error=why))
        return out


@contextlib.asynccontextmanager
async def _progress_display(session: Session, progress: Any, enabled: bool,
                            dry_run: bool = False) -> AsyncIterator[Any]:
    """Draw the progress line from the library's progress state while the block runs; yields
    the console to print lines above it, or ``None``."""
    if not enabled:
        yield None
        return
    from .._display import live_progress

    async with live_progress(progress, dry_run=dry_run) as line:
        session.display = line
        try:
            yield line.console
        finally:
            session.display = None


def emit_reports(reports: Sequence[Any], *, as_json: bool, out: TextIO,
                  single: bool = False, fleet: bool = False) -> None:
    """Print the reports: a JSON array (one object for plain ``migrate``: ``single``), or the
    table (its first column titled "bot" for a ``fleet``, even when empty)."""
    payload: Any = reports[0].to_dict() if single else [r.to_dict() for r in reports]
    # A reader that went away (`... | head`) wanted no more: not an error of the migration.
    # (rich reports a broken pipe as SystemExit(1) after pointing stdout at /dev/null.)
    with contextlib.suppress(BrokenPipeError, SystemExit):
        if as_json:
            print(json.dumps(payload, indent=2, ensure_ascii=False), file=out, flush=True)
        else:
            from .._display import print_reports  # rich: 17 ms of imports, not for --json

            print_reports(reports, out, fleet=fleet)


def emit_error(message: str, hint: str | None, code: int, reports: Sequence[Any]) -> None:
    """``--json`` after an error: one JSON object on stdout with the error, its hint, the exit
    code and the reports of what was done (each bot's or the source's, incomplete where the
    error stopped it; ``[]`` when nothing had started)."""
    payload = {"error": message, "hint": hint, "exit_code": code, "ok": False,
               "reports": [r.to_dict() for r in reports]}
    with contextlib.suppress(BrokenPipeError):
        print(json.dumps(payload, indent=2, ensure_ascii=False), file=sys.stdout, flush=True)


def _report_exit_code(reports: Sequence[Any]) -> int:
    return EXIT_OK if all(r.ok for r in reports) else EXIT_INCOMPLETE


def _itemizer(args: argparse.Namespace) -> Callable[[str], None] | None:
    if not args.itemize:
        return None
    if not args.dry_run:
        raise errors.ConfigError("--itemize (-v) lists what a --dry-run would send: add "
                                 "--dry-run")
    out = sys.stderr if args.json else sys.stdout  # --json keeps stdout one JSON document

    closed = False

    def itemize(line: str) -> None:
        nonlocal closed
        if closed:
            return
        try:
            print(line, file=out)
        except BrokenPipeError:  # `... -v | head`: the reader has all it wanted
            closed = True

    return itemize


async def target_hint(cause: str | None, target: str, args: argparse.Namespace, *,
                      spoke_grpc: bool = False) -> str | None:
    """A hint for a connection failure of ``cause`` (see
    :func:`memoh_trio._errors.connection_cause`) with ``target``: what the target turns out to
    be (probed), or where the token goes."""
    if cause == "refused":
        return ("check the server's token: give it with --token-file F, --token or the "
                f"{TOKEN_ENV} environment variable")
    if cause != "unreachable":
        return None
    from .._diagnose import diagnose
    from .args import client_tls

    host, port = parse_target(target)
    try:
        return await diagnose(host, port, client_tls=client_tls(args) is not None,
                              spoke_grpc=spoke_grpc)
    except (OSError, errors.MemohError):
        return None


# --- commands ----------------------------------------------------------------------------------


def _planned_source(args: argparse.Namespace) -> tuple[str, str | None]:
    """(source, bot_id) of ``migrate`` / ``migrate-bot``, for a report if it is stopped."""
    if args.command == "migrate":
        return os.path.abspath(args.src), None
    from .._migrate import bot_source

    return bot_source(args.data_root, args.bot_id), args.bot_id


async def _cmd_migrate(args: argparse.Namespace, session: Session) -> int:
    from .. import _migrate
    from .._client import connect
    from .._progress import Progress

    _migrate.norm_dest(args.dest)  # a bad --dest is refused before anything is dialled
    progress = session.progress = Progress()
    show = sys.stderr.isatty() and not args.json
    itemize = _itemizer(args)
    session.planned = [_planned_source(args)]
    source = session.planned[0][0]
    async with (
        connect(args.target, **connect_kwargs(args)) as client,
        _progress_display(session, progress, show and itemize is None, args.dry_run),
    ):
        session.client = client
        if args.command == "migrate":
            report = await _migrate.migrate(args.src, client, progress=progress,
                                            itemize=itemize, **migrate_kwargs(args))
        else:
            report = await _migrate.migrate_bot(args.bot_id, args.data_root, client,
                                                progress=progress, itemize=itemize,
                                                **migrate_kwargs(args))
    session.finished[source] = report
    emit_reports([report], as_json=args.json, out=sys.stdout, single=args.command == "migrate")
    return _report_exit_code([report])


def _load_targets(args: argparse.Namespace) -> dict[str, str] | Callable[[str], str]:
    if args.targets is not None:
        try:
            data = json.loads(Path(args.targets).read_text())
        except (OSError, ValueError) as exc:
            raise errors.ConfigError(f"cannot read targets file {args.targets}: {exc}") from exc
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise errors.ConfigError(
                f'targets file {args.targets} must be a JSON object {{"bot_id": "host:port"}}'
            )
        for bot_id, target in data.items():
            try:
                parse_target(target)
            except errors.ConfigError as exc:
                raise errors.ConfigError(
                    f"targets file {args.targets}, bot {bot_id!r}: {exc}") from None
        return dict(data)
    template: str = args.target_template
    return functools.partial(fill_target_template, template)


#: Unreachable targets a fleet run probes for its hints (each probe takes up to 3 s).
FLEET_HINTS = 3


async def _cmd_migrate_all(args: argparse.Namespace, session: Session) -> int:
    from .. import _migrate
    from .._display import bot_line
    from .._pool import Pool
    from .._progress import Progress
    from .exits import fleet_exit_code

    targets = _load_targets(args)
    _migrate.check_data_root(args.data_root)
    _migrate.norm_dest(args.dest)
    bots = _migrate.list_bots(args.data_root)
    given = (f"targets file {args.targets}" if args.targets is not None
             else f"--target-template {args.target_template!r}")
    _migrate.check_targets(bots, targets, dest=args.dest, source=given)
    itemize = _itemizer(args)
    kwargs = migrate_kwargs(args)
    session.planned = [(_migrate.bot_source(args.data_root, b), b) for b in bots]
    progress = session.progress = Progress()
    show = sys.stderr.isatty() and not args.json and itemize is None
    async with (
        Pool(targets, **connect_kwargs(args)) as pool,
        _progress_display(session, progress, show, args.dry_run) as console,
    ):

        def on_report(report: Any) -> None:
            session.finished[report.source] = report
            if console is not None:
                console.print(bot_line(report), markup=False)
            elif not args.json:
                print(bot_line(report), file=sys.stderr, flush=True)

        def on_stopped(report: Any) -> None:
            session.stopped[report.source] = report

        reports = await _migrate.migrate_all(
            args.data_root, pool, bot_concurrency=args.bot_concurrency, progress=progress,
            on_report=on_report, on_stopped=on_stopped, itemize=itemize, **kwargs)
    emit_reports(reports, as_json=args.json, out=sys.stdout, fleet=True)
    await _fleet_hints(reports, pool, args)
    return fleet_exit_code(reports)


async def _fleet_hints(reports: Sequence[Any], pool: Any, args: argparse.Namespace) -> None:
    """A hint line per unreachable target (the first few), one for refused credentials."""
    seen: set[str] = set()
    for report in reports:
        if report.cause is None or report.bot_id is None:
            continue
        try:
            target = pool.address_of(report.bot_id)
        except errors.ConfigError:
            continue
        key = target if report.cause == "unreachable" else "refused"
        if key in seen or len(seen) >= FLEET_HINTS:
            continue
        seen.add(key)
        hint = await target_hint(report.cause, target, args)
        if hint:
            who = f"bot {report.bot_id} ({target})" if report.cause == "unreachable" else \
                "bots refused"
            print(f"memoh-trio: hint: {who}: {hint}", file=sys.stderr, flush=True)


async def _cmd_serve(args: argparse.Namespace, session: Session) -> int:
    import trio

    from .._server import serve
    from .._tls import ServerTLS

    token = resolve_token(args)
    if token is not None and args.no_auth:
        raise errors.ConfigError("--no-auth contradicts the token given (--token, --token-file "
                                 f"or ${TOKEN_ENV}); hint: drop one of them")
    if not args.root.is_dir():
        raise errors.SourceError(f"server root {args.root} is not a directory")
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise errors.ConfigError("--tls-cert and --tls-key go together")
        tls = ServerTLS(cert=args.tls_cert, key=args.tls_key, client_ca=args.tls_client_ca)
    elif args.tls_client_ca:
        raise errors.ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    host, port = args.listen
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(functools.partial(serve, args.root, host, port,
                                                     token=token,
                                                     allow_unauthenticated=args.no_auth,
                                                     insecure_no_auth_on_network=(
                                                         args.insecure_no_auth_on_network),
                                                     allow_exec=args.allow_exec, tls=tls,
                                                     durable=args.durable,
                                                     direct_io=args.direct_io,
                                                     memory_budget=args.memory_budget * 2**20))
        print(f"listening on {addr}", flush=True)
    return EXIT_OK


async def _cmd_demo(args: argparse.Namespace, session: Session) -> int:
    from .._demo import DONE_MESSAGE, run_demo

    report = await run_demo(files=args.files, show_progress=sys.stderr.isatty() and not args.json)
    emit_reports([report], as_json=args.json, out=sys.stdout, single=True)
    if report.ok:
        print(DONE_MESSAGE, file=sys.stderr, flush=True)
    return _report_exit_code([report])


#: The modules each command imports when it runs (lazily, above): the console script loads them
#: before the command starts, with the garbage collector off (see :func:`.main.main`). The draw
#: of progress (rich) is not listed: it is loaded only when stderr is a terminal.
MODULES: dict[str, tuple[str, ...]] = {
    "migrate": ("memoh_trio._migrate", "memoh_trio._client", "memoh_trio._progress"),
    "migrate-bot": ("memoh_trio._migrate", "memoh_trio._client", "memoh_trio._progress"),
    "migrate-all": ("memoh_trio._migrate", "memoh_trio._pool", "memoh_trio._progress"),
    "serve": ("memoh_trio._server", "memoh_trio._tls"),
    "demo": ("memoh_trio._demo",),
}

COMMANDS: dict[str, Callable[[argparse.Namespace, Session], Awaitable[int]]] = {
    "migrate": _cmd_migrate,
    "migrate-bot": _cmd_migrate,
    "migrate-all": _cmd_migrate_all,
    "serve": _cmd_serve,
    "demo": _cmd_demo,
}

