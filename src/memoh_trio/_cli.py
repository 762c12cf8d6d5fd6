"""The ``memoh-trio`` command line: a thin layer over the library.

It parses arguments, calls :mod:`memoh_trio`'s public functions, draws progress from the library's
progress state, and turns outcomes into exit codes (see :data:`EXIT_CODES`). No migration logic
lives here.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from . import __version__
from . import _errors as errors
from ._defaults import DEFAULT_BOT_CONCURRENCY, DEFAULT_CONCURRENCY
from ._units import (
    TEMPLATE_EXAMPLE,
    check_target_template,
    fill_target_template,
    parse_listen,
    parse_size,
    parse_target,
)

if TYPE_CHECKING:
    import trio

    from ._tls import ClientTLS

# Imports are lazy here: a command loads only what it uses (``--version`` and argument errors:
# none of trio, grpclib, the bridge or rich; rich only to draw; the server modules only for
# ``serve``). ``python -X importtime -m memoh_trio --version`` shows what a start costs.

# Exit codes: a contract with scripts and operators. Keep them stable.
EXIT_OK = 0  # migrated, already migrated, or nothing to do
EXIT_INCOMPLETE = 1  # some entries failed: the source is kept and not renamed
EXIT_USAGE = 2  # invalid invocation or input (bad option, missing SRC, SRC not a directory, ...)
EXIT_UNREACHABLE = 3  # the target could not be reached or does not speak gRPC/TLS as configured
EXIT_REFUSED = 4  # the target refused us: missing/wrong token, permission denied
EXIT_BUSY = 5  # another migration of the same source is running (single-flight lock)
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C)
EXIT_TERMINATED = 143  # SIGTERM

EXIT_CODES = {
    EXIT_OK: "migrated (or already migrated / nothing to do)",
    EXIT_INCOMPLETE: "incomplete: some entries failed; the source was kept, not renamed",
    EXIT_USAGE: "invalid invocation or input",
    EXIT_UNREACHABLE: "target unreachable, not gRPC, or TLS mismatch",
    EXIT_REFUSED: "target refused the call (authentication or permission)",
    EXIT_BUSY: "another migration of this source is running",
    EXIT_INTERRUPTED: "interrupted (SIGINT); nothing renamed",
    EXIT_TERMINATED: "terminated (SIGTERM); nothing renamed",
}


def exit_code_for(exc: BaseException) -> int:
    """Map an exception that ended a command to its exit code."""
    if isinstance(exc, errors.ConfigError | errors.SourceError):
        return EXIT_USAGE
    if isinstance(exc, errors.MigrationBusy):
        return EXIT_BUSY
    if isinstance(exc, errors.Unauthenticated | errors.PermissionDenied):
        return EXIT_REFUSED
    if isinstance(exc, errors.Unavailable | errors.DeadlineExceeded):
        return EXIT_UNREACHABLE
    return EXIT_INCOMPLETE


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and a pointer to ``--help``, not the usage."""

    def error(self, message: str) -> NoReturn:
        # self.prog is "memoh-trio" or "memoh-trio COMMAND" (subparsers inherit this class).
        self.exit(EXIT_USAGE, f"memoh-trio: error: {message}\n"
                              f"see '{self.prog} --help'\n")

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: None = None) -> argparse.Namespace:
        """Like argparse's, but an unknown option points at its command's ``--help``."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            command = self.commands.get(getattr(parsed, "command", None) or "", self)
            command.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed

    @property
    def commands(self) -> dict[str, argparse.ArgumentParser]:
        """The subcommand parsers, by name."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}


def _size_arg(text: str) -> int:
    from ._client import MAX_CHUNK_SIZE

    try:
        size = parse_size(text)
    except errors.ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size > MAX_CHUNK_SIZE:
        raise argparse.ArgumentTypeError(
            f"{text!r} is too large: chunks must stay at most {MAX_CHUNK_SIZE} bytes (below the "
            "4 MiB message limit of grpcio and grpc-go servers)")
    return size


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _target_arg(text: str) -> str:
    try:
        parse_target(text)
    except errors.ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _template_arg(text: str) -> str:
    try:
        return check_target_template(text)
    except errors.ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _listen_arg(text: str) -> tuple[str, int]:
    try:
        return parse_listen(text)
    except errors.ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("target", "listen address")) from None


#: The environment variable a token may come from (after --token and --token-file).
TOKEN_ENV = "MEMOH_TRIO_TOKEN"


def _add_token_options(p: argparse.ArgumentParser | Any, what: str) -> None:
    p.add_argument("--token", default=None,
                   help=f"{what} (default: ${TOKEN_ENV}); visible in `ps`: prefer --token-file")
    p.add_argument("--token-file", type=Path, metavar="F",
                   help=f"read the {what} from file F (one trailing newline is stripped)")


def read_token_file(path: Path) -> str:
    """The token in ``path`` with one trailing newline (``\n`` or ``\r\n``) stripped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise errors.ConfigError(f"cannot read token file {path}: {exc}") from exc
    text = text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text
    if not text:
        raise errors.ConfigError(f"token file {path} is empty; hint: write the token into it")
    return text


def resolve_token(args: argparse.Namespace, environ: Any = os.environ) -> str | None:
    """``--token``, else ``--token-file``, else ``$MEMOH_TRIO_TOKEN`` (empty = unset)."""
    if args.token is not None and args.token_file is not None:
        raise errors.ConfigError("--token and --token-file contradict each other; "
                                 "hint: keep --token-file (a --token shows in `ps`)")
    if args.token_file is not None:
        return read_token_file(args.token_file)
    if args.token is not None:
        return str(args.token)
    return environ.get(TOKEN_ENV) or None


def _add_connection_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    _add_token_options(g, "bearer token")
    g.add_argument("--tls-ca", type=Path, metavar="F",
                   help="CA bundle (PEM) that signs the server certificate")
    g.add_argument("--tls-cert", type=Path, metavar="F",
                   help="client certificate (PEM) for mutual TLS")
    g.add_argument("--tls-key", type=Path, metavar="F",
                   help="client key (PEM) for mutual TLS")
    g.add_argument("--tls-server-name", metavar="NAME",
                   help="name to verify in the server certificate")
    g.add_argument("--timeout", type=_seconds_arg, default=120.0, metavar="SECONDS",
                   help="per-call timeout in seconds for unary calls (default: 120)")


def _add_copy_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("copy")
    g.add_argument("--dest", default="", metavar="DIR",
                   help="destination directory under the server root")
    g.add_argument("--concurrency", type=_positive_int, default=None, metavar="N",
                   help=f"file streams and tar batches in flight at once (default: "
                   f"{DEFAULT_CONCURRENCY})")
    g.add_argument("--chunk-size", type=_size_arg, default=None, metavar="SIZE",
                   help="WriteRaw chunk size, e.g. 1MiB (must stay below 4 MiB)")
    g.add_argument("--verify", choices=("size", "sha256"), default="size",
                   help="what must match after each file (default: size)")
    g.add_argument("--no-preserve", dest="preserve", action="store_false",
                   help="do not apply permission bits and mtimes in the container")
    g.add_argument("--no-rename", dest="rename", action="store_false",
                   help="copy but never rename the source to .migrated")
    g.add_argument("--stall-timeout", type=_seconds_arg, default=None, metavar="SECONDS",
                   help="fail a file whose stream makes no progress for this many seconds "
                   "(default: 60)")
    g.add_argument("--no-tar-batches", dest="tar_batches", action="store_false",
                   help="send every file through its own WriteRaw stream, never through tar "
                   "batches over Exec")
    g.add_argument("--dry-run", action="store_true",
                   help="walk and classify the source, copy nothing, rename nothing")
    g.add_argument("-v", "--itemize", action="store_true",
                   help="with --dry-run: print one line per entry it would send, like "
                   "rsync -n -i ('>f+++++++++ new file', '>f.st...... changed file', "
                   "'cd+++++++++ dir/', 'cL+++++++++ link -> target')")
    g.add_argument("--json", action="store_true",
                   help="print the report as JSON on stdout (an array of reports, each with "
                   "bot_id, for migrate-bot and migrate-all; one object for migrate)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="memoh-trio",
        description="Move a Memoh bot's data tree into its container over gRPC, "
        "renaming the source to <dir>.migrated only when every entry made it.",
        epilog="exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()),
    )
    parser.add_argument("--version", action="version", version=f"memoh-trio {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="copy one directory tree into a container")
    p.add_argument("src", type=Path, metavar="SRC", help="directory to migrate")
    p.add_argument("--target", required=True, type=_target_arg, metavar="HOST:PORT")
    _add_copy_options(p)
    _add_connection_options(p)

    p = sub.add_parser("migrate-bot", help="migrate DATA_ROOT/bots/BOT_ID (the seed's semantics)")
    p.add_argument("bot_id", metavar="BOT_ID")
    p.add_argument("--data-root", required=True, type=Path, metavar="DIR")
    p.add_argument("--target", required=True, type=_target_arg, metavar="HOST:PORT")
    _add_copy_options(p)
    _add_connection_options(p)

    p = sub.add_parser("migrate-all", help="migrate every bot under DATA_ROOT/bots/")
    p.add_argument("--data-root", required=True, type=Path, metavar="DIR")
    t = p.add_mutually_exclusive_group(required=True)
    t.add_argument("--target-template", metavar="TEMPLATE", type=_template_arg,
                   help=f"HOST:PORT with {{bot_id}} in the host, e.g. '{TEMPLATE_EXAMPLE}'"
                   .replace("%", "%%"))
    t.add_argument("--targets", type=Path, metavar="FILE.json",
                   help='JSON object {"bot_id": "host:port", ...}')
    p.add_argument("--bots", type=_positive_int, default=DEFAULT_BOT_CONCURRENCY, metavar="N",
                   help=f"bots migrated at once (default: {DEFAULT_BOT_CONCURRENCY})")
    _add_copy_options(p)
    _add_connection_options(p)

    p = sub.add_parser("serve", help="run the ContainerService over a root directory")
    p.add_argument("--root", required=True, type=Path, metavar="DIR")
    p.add_argument("--listen", type=_listen_arg, default=("127.0.0.1", 9090), metavar="HOST:PORT",
                   help="address to listen on (port 0: any free port; default 127.0.0.1:9090)")
    _add_token_options(p, "bearer token every call must carry")
    p.add_argument("--no-auth", action="store_true",
                   help="serve WITHOUT a token: any client that reaches the port may run "
                   "commands (Exec); only for a server inside an isolated container")
    p.add_argument("--no-exec", dest="allow_exec", action="store_false",
                   help="turn Exec off (every Exec call fails with UNIMPLEMENTED)")
    p.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="server key (PEM)")
    p.add_argument("--tls-client-ca", type=Path, help="require client certificates from this CA")
    p.add_argument("--durable", action="store_true",
                   help="fdatasync every uploaded file before it is renamed into place")
    p.add_argument("--no-direct-io", dest="direct_io", action="store_false",
                   help="write uploads through the page cache (default: large uploads are "
                        "written with O_DIRECT where the filesystem allows it)")

    p = sub.add_parser("demo", help="migrate a sample bot tree into an in-process server")
    p.add_argument("--files", type=_positive_int, default=400, metavar="N",
                   help="small files in the sample tree (default: 400)")
    p.add_argument("--json", action="store_true", help="print one JSON report on stdout")
    return parser


def _client_tls(args: argparse.Namespace) -> ClientTLS | None:
    from ._tls import ClientTLS

    if not (args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name):
        return None
    return ClientTLS(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key,
                     server_hostname=args.tls_server_name)


def _connect_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"tls": _client_tls(args), "token": resolve_token(args), "timeout": args.timeout}


def _migrate_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "dest": args.dest, "verify": args.verify, "preserve": args.preserve,
        "rename": args.rename and not args.dry_run, "dry_run": args.dry_run,
        "tar_batches": args.tar_batches,
    }
    if args.concurrency is not None:
        kwargs["concurrency"] = args.concurrency
    if args.chunk_size is not None:
        kwargs["chunk_size"] = args.chunk_size
    if args.stall_timeout is not None:
        kwargs["stall_timeout"] = args.stall_timeout
    return kwargs


# --- output ------------------------------------------------------------------------------------


def _print_error(message: str) -> None:
    print(f"memoh-trio: error: {message}", file=sys.stderr, flush=True)


class _Session:
    """What one command has to say if it is stopped half-way: the reports of what finished and
    the sources still running or waiting (SIGINT/SIGTERM print a partial report from this)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.planned: list[tuple[str, str | None]] = []  # (source, bot_id) in report order
        self.finished: dict[str, Any] = {}  # source -> MigrationReport
        self.progress: Any = None  # the Progress of a single migrate / migrate-bot
        self.signal_name: str | None = None

    def partial_reports(self) -> list[Any]:
        from ._report import MigrationReport

        out = []
        for source, bot_id in self.planned:
            report = self.finished.get(source)
            if report is None:
                state = self.progress.state if self.progress is not None else None
                report = MigrationReport(
                    source=source, bot_id=bot_id, status="incomplete",
                    files=state.files_done if state else 0,
                    bytes=state.bytes_done if state else 0,
                    error=f"stopped by {self.signal_name} before it finished")
            out.append(report)
        return out


@contextlib.asynccontextmanager
async def _progress_display(progress: Any, enabled: bool,
                            dry_run: bool = False) -> AsyncIterator[Any]:
    """Draw the progress line from the library's progress state while the block runs; yields
    the console to print lines above it, or ``None``."""
    if not enabled:
        yield None
        return
    from ._display import live_progress

    async with live_progress(progress, dry_run=dry_run) as console:
        yield console


def _emit_reports(reports: Sequence[Any], *, as_json: bool, out: TextIO,
                  single: bool = False) -> None:
    """Print the reports: a JSON array (one object for plain ``migrate``: ``single``), or the
    table."""
    from ._display import print_reports

    payload: Any = reports[0].to_dict() if single else [r.to_dict() for r in reports]
    # A reader that went away (`... | head`) wanted no more: not an error of the migration.
    # (rich reports a broken pipe as SystemExit(1) after pointing stdout at /dev/null.)
    with contextlib.suppress(BrokenPipeError, SystemExit):
        if as_json:
            print(json.dumps(payload, indent=2, ensure_ascii=False), file=out, flush=True)
        else:
            print_reports(reports, out)


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


# --- commands ----------------------------------------------------------------------------------


def _planned_source(args: argparse.Namespace) -> tuple[str, str | None]:
    """(source, bot_id) of ``migrate`` / ``migrate-bot``, for a report if it is stopped."""
    if args.command == "migrate":
        return os.path.abspath(args.src), None
    from ._migrate import bot_source

    return bot_source(args.data_root, args.bot_id), args.bot_id


async def _cmd_migrate(args: argparse.Namespace, session: _Session) -> int:
    from . import _migrate
    from ._client import connect
    from ._progress import Progress

    progress = session.progress = Progress()
    show = sys.stderr.isatty() and not args.json
    itemize = _itemizer(args)
    session.planned = [_planned_source(args)]
    source = session.planned[0][0]
    async with (
        connect(args.target, **_connect_kwargs(args)) as client,
        _progress_display(progress, show and itemize is None, args.dry_run),
    ):
        if args.command == "migrate":
            report = await _migrate.migrate(args.src, client, progress=progress,
                                            itemize=itemize, **_migrate_kwargs(args))
        else:
            report = await _migrate.migrate_bot(args.bot_id, args.data_root, client,
                                                progress=progress, itemize=itemize,
                                                **_migrate_kwargs(args))
    session.finished[source] = report
    _emit_reports([report], as_json=args.json, out=sys.stdout, single=args.command == "migrate")
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


async def _cmd_migrate_all(args: argparse.Namespace, session: _Session) -> int:
    from . import _migrate
    from ._display import bot_line
    from ._pool import Pool
    from ._progress import Progress

    if args.itemize:
        raise errors.ConfigError("--itemize (-v) is for migrate and migrate-bot; for a fleet, "
                                 "use migrate-all --dry-run, then migrate-bot -v --dry-run")
    targets = _load_targets(args)
    _migrate.check_data_root(args.data_root)
    kwargs = _migrate_kwargs(args)
    file_concurrency = kwargs.pop("concurrency", None)
    if file_concurrency is not None:
        kwargs["file_concurrency"] = file_concurrency
    session.planned = [(_migrate.bot_source(args.data_root, b), b)
                       for b in _migrate.list_bots(args.data_root)]
    progress = Progress()
    show = sys.stderr.isatty() and not args.json
    async with (
        Pool(targets, **_connect_kwargs(args)) as pool,
        _progress_display(progress, show, args.dry_run) as console,
    ):

        def on_report(report: Any) -> None:
            session.finished[report.source] = report
            if console is not None:
                console.print(bot_line(report), markup=False)
            elif not args.json:
                print(bot_line(report), file=sys.stderr, flush=True)

        reports = await _migrate.migrate_all(args.data_root, pool, bot_concurrency=args.bots,
                                             progress=progress, on_report=on_report, **kwargs)
    _emit_reports(reports, as_json=args.json, out=sys.stdout)
    return _report_exit_code(reports)


async def _cmd_serve(args: argparse.Namespace, session: _Session) -> int:
    import trio

    from ._server import serve
    from ._tls import ServerTLS

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
                                                     allow_exec=args.allow_exec, tls=tls,
                                                     durable=args.durable,
                                                     direct_io=args.direct_io))
        print(f"listening on {addr}", flush=True)
    return EXIT_OK


async def _cmd_demo(args: argparse.Namespace, session: _Session) -> int:
    from ._demo import DONE_MESSAGE, run_demo

    report = await run_demo(files=args.files, show_progress=sys.stderr.isatty() and not args.json)
    _emit_reports([report], as_json=args.json, out=sys.stdout, single=True)
    if report.ok:
        print(DONE_MESSAGE, file=sys.stderr, flush=True)
    return _report_exit_code([report])


_COMMANDS: dict[str, Callable[[argparse.Namespace, _Session], Awaitable[int]]] = {
    "migrate": _cmd_migrate,
    "migrate-bot": _cmd_migrate,
    "migrate-all": _cmd_migrate_all,
    "serve": _cmd_serve,
    "demo": _cmd_demo,
}


def _stop_message(args: argparse.Namespace, name: str) -> str:
    if args.command == "serve":
        return f"memoh-trio: {name}: stopping the server"
    if args.command == "migrate-all":
        return (f"memoh-trio: {name}: stopping; finished bots keep their outcome, the others "
                "are not renamed (again: stop at once)")
    return f"memoh-trio: {name}: stopping; the source is not renamed (again: stop at once)"


async def _run(args: argparse.Namespace, session: _Session) -> int:
    """Run one command; SIGINT/SIGTERM cancel it cleanly (cleanup runs) and set the exit code:
    a stopped migration prints what finished and what did not; ``serve`` stops with 0."""
    import trio

    received: list[int] = []
    code = EXIT_OK
    async with trio.open_nursery() as nursery:

        async def watch_signals(task_status: trio.TaskStatus[None]) -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()
                async for signum in signals:
                    if received:  # a second signal: stop waiting for cleanup
                        raise _Interrupted(signum)
                    received.append(signum)
                    session.signal_name = signal.Signals(signum).name
                    print(_stop_message(args, session.signal_name), file=sys.stderr,
                          flush=True)
                    command_scope.cancel()

        command_scope = trio.CancelScope()
        await nursery.start(watch_signals)
        with command_scope:
            code = await _COMMANDS[args.command](args, session)
        nursery.cancel_scope.cancel()
    if received:
        if args.command == "serve":
            return EXIT_OK  # a server's clean stop
        if args.command != "demo" and session.planned:
            _emit_reports(session.partial_reports(), as_json=args.json, out=sys.stdout,
                          single=args.command == "migrate")
        return EXIT_INTERRUPTED if received[0] == signal.SIGINT else EXIT_TERMINATED
    return code


def _hint(exc: BaseException, args: argparse.Namespace) -> str | None:
    """A second line for an error, when we can say more than the error itself."""
    if isinstance(exc, errors.Unauthenticated):
        return ("give the server's token with --token-file F, --token or the "
                f"{TOKEN_ENV} environment variable")
    if isinstance(exc, errors.Unavailable) and getattr(args, "target", None):
        from ._diagnose import diagnose

        host, port = parse_target(args.target)
        try:
            import trio

            return trio.run(functools.partial(diagnose, host, port,
                                              client_tls=_client_tls(args) is not None))
        except (OSError, errors.MemohError):
            return None
    return None


def _fail(exc: errors.MemohError, args: argparse.Namespace) -> int:
    _print_error(str(exc))
    hint = _hint(exc, args)
    if hint:
        print(f"memoh-trio: hint: {hint}", file=sys.stderr, flush=True)
    return exit_code_for(exc)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the ``memoh-trio`` console script."""
    args = build_parser().parse_args(argv)
    import trio

    session = _Session(args)
    try:
        code = trio.run(_run, args, session)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except _Interrupted as exc:
        code = EXIT_INTERRUPTED if exc.signum == signal.SIGINT else EXIT_TERMINATED
    except errors.MemohError as exc:
        code = _fail(exc, args)
    except BaseExceptionGroup as group:
        first = _first_leaf(group)
        if isinstance(first, errors.MemohError):
            code = _fail(first, args)
        else:
            raise
    sys.exit(code)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
