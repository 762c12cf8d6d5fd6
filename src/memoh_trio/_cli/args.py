"""The ``memoh-trio`` argument parser: commands, options and their value checks.

Every check here is pure (no trio, no network): a usage error costs no imports and is one line
plus a pointer to ``--help`` (exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .. import __version__
from .. import _errors as errors
from .._budget import DEFAULT_BUDGET
from .._defaults import (
    DEFAULT_BOT_CONCURRENCY,
    DEFAULT_CONCURRENCY,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
)
from .._units import (
    TEMPLATE_EXAMPLE,
    check_target_template,
    parse_listen,
    parse_size,
    parse_target,
)
from .exits import EXIT_CODES, EXIT_USAGE

if TYPE_CHECKING:
    from .._tls import ClientTLS


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and a pointer to ``--help``, not the usage."""

    #: ``--json`` was on the command line: a usage error is also one JSON object on stdout.
    json_errors = False

    def error(self, message: str) -> NoReturn:
        # self.prog is "memoh-trio" or "memoh-trio COMMAND" (subparsers inherit this class).
        hint = f"see '{self.prog} --help'"
        if _Parser.json_errors:
            print(json.dumps({"error": message, "hint": hint, "exit_code": EXIT_USAGE,
                              "ok": False, "reports": []}, indent=2, ensure_ascii=False))
        self.exit(EXIT_USAGE, f"memoh-trio: error: {message}\n{hint}\n")

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: None = None) -> argparse.Namespace:
        """Like argparse's, but an unknown option points at its command's ``--help``."""
        _Parser.json_errors = "--json" in (sys.argv[1:] if args is None else args)
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

    try:
        size = parse_size(text)
    except errors.ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size > MAX_CHUNK_SIZE:
        raise argparse.ArgumentTypeError(
            f"{text!r} is too large: chunks must stay at most {MAX_CHUNK_SIZE} bytes (below the "
            "4 MiB message limit of grpcio and grpc-go servers)")
    if size < MIN_CHUNK_SIZE:
        raise argparse.ArgumentTypeError(
            f"{text!r} is too small: chunks must be at least 16KiB (smaller ones make every "
            "file crawl); the default, 1MiB, suits every server")
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
        raise argparse.ArgumentTypeError(str(exc)) from None


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
                   help="destination directory, relative to the server's root (Memoh's "
                   "containers: /data, so 'sub' is /data/sub); absolute paths and '..' are "
                   "refused (default: the root)")
    g.add_argument("--concurrency", type=_positive_int, default=None, metavar="N",
                   help=f"file streams and tar batches in flight at once (per bot) (default: "
                   f"{DEFAULT_CONCURRENCY})")
    g.add_argument("--chunk-size", type=_size_arg, default=None, metavar="SIZE",
                   help="WriteRaw chunk size, 16KiB up to 4MiB less 1KiB (default: 1MiB)")
    g.add_argument("--verify", choices=("size", "sha256"), default="size",
                   help="what must match after each file (default: size)")
    g.add_argument("--no-preserve", dest="preserve", action="store_false",
                   help="do not apply permission bits and mtimes in the container")
    g.add_argument("--no-rename", dest="rename", action="store_false",
                   help="copy but never rename the source to .migrated")
    g.add_argument("--rename-without-flush", action="store_true",
                   help="rename the source even where the container cannot be asked to flush "
                   "the copy to its disk (a server without Exec): it may then be only in the "
                   "container's page cache; off, such a run copies and keeps the source")
    g.add_argument("--stall-timeout", type=_seconds_arg, default=None, metavar="SECONDS",
                   help="fail a file whose stream makes no progress for this many seconds "
                   "(default: 60)")
    g.add_argument("--no-tar-batches", dest="tar_batches", action="store_false",
                   help="send every file through its own WriteRaw stream, never through tar "
                   "batches over Exec")
    g.add_argument("--no-agent", dest="agent", action="store_false",
                   help="no long-lived python3 in the container: a process per container "
                   "step (python3 or the shell), as where python3 cannot start")
    g.add_argument("--dry-run", action="store_true",
                   help="walk and classify the source, copy nothing, rename nothing")
    g.add_argument("-v", "--itemize", action="store_true",
                   help="with --dry-run: print one line per entry it would send, like "
                   "rsync -n -i ('>f+++++++++ new file', '>f.st...... changed file', "
                   "'cd+++++++++ dir/', 'cL+++++++++ link -> target'; migrate-all: each line "
                   "starts with 'BOT_ID: '); unprintable characters in names as rsync shows "
                   "them (a newline is \\#012)")
    g.add_argument("--json", action="store_true",
                   help="print the report as JSON on stdout (an array of reports, each with "
                   "bot_id, for migrate-bot and migrate-all; one object for migrate); after an "
                   "error, one object with error, hint, exit_code and reports")


#: The examples that end each command's ``--help`` (as ``kubectl cp --help`` does).
EXAMPLES: dict[str, str] = {
    "migrate": """\
  # Preview what would be sent (rsync -n -i style), then migrate; the token from a file
  memoh-trio migrate ./bots/3f9a6c1e --target 10.0.0.7:9090 --token-file token --dry-run -v
  memoh-trio migrate ./bots/3f9a6c1e --target 10.0.0.7:9090 --token-file token

  # Into a subdirectory of the container's root (Memoh's containers: /data/imported)
  memoh-trio migrate ./tree --target 10.0.0.7:9090 --dest imported

  # A report for scripts: one JSON object on stdout (also after an error)
  memoh-trio migrate ./tree --target 10.0.0.7:9090 --json""",
    "migrate-bot": """\
  # Migrate DATA_ROOT/bots/BOT_ID; a rerun says already-migrated
  memoh-trio migrate-bot 3f9a6c1e --data-root /var/lib/memoh --target bot-3f9a6c1e:9090

  # Preview first, with every entry it would send
  memoh-trio migrate-bot 3f9a6c1e --data-root /var/lib/memoh --target bot-3f9a6c1e:9090 \\
      --dry-run -v""",
    "migrate-all": """\
  # Every bot, its container's address from its id (one container per bot)
  memoh-trio migrate-all --data-root /var/lib/memoh --target-template '{bot_id}.bots.internal:9090'

  # Addresses from a file, two bots at a time, a JSON array of reports
  echo '{"alpha": "10.0.0.7:9090", "beta": "10.0.0.8:9090"}' > targets.json
  memoh-trio migrate-all --data-root /var/lib/memoh --targets targets.json \\
      --bot-concurrency 2 --json

  # Preview every bot: one line per entry, each starting with its bot id
  memoh-trio migrate-all --data-root /var/lib/memoh --targets targets.json --dry-run -v""",
    "serve": """\
  # On loopback, with a token from a file (the client gives the same file)
  openssl rand -hex 32 > token
  memoh-trio serve --root /srv/bot --listen 127.0.0.1:9090 --token-file token

  # Inside an isolated container, as Memoh runs its server: no token, its own interface
  memoh-trio serve --root /data --listen 0.0.0.0:9090 --no-auth --insecure-no-auth-on-network

  # Port 0: any free port (printed as 'listening on HOST:PORT')
  memoh-trio serve --root /srv/bot --listen 127.0.0.1:0 --token-file token""",
    "demo": """\
  # The whole job on a sample bot, in a temporary directory
  memoh-trio demo

  # A bigger sample, the report as JSON
  memoh-trio demo --files 5000 --json""",
}


def _examples(command: str) -> dict[str, Any]:
    """``add_parser`` keywords that end the command's help with its examples."""
    return {"epilog": "examples:\n" + EXAMPLES[command].replace("%", "%%"),
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="memoh-trio",
        description="Move a Memoh bot's data tree into its container over gRPC, "
        "renaming the source to <dir>.migrated only when every entry made it.",
        epilog="exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()),
    )
    parser.add_argument("--version", action="version", version=f"memoh-trio {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="copy one directory tree into a container",
                       **_examples("migrate"))
    p.add_argument("src", type=Path, metavar="SRC", help="directory to migrate")
    p.add_argument("--target", required=True, type=_target_arg, metavar="HOST:PORT")
    _add_copy_options(p)
    _add_connection_options(p)

    p = sub.add_parser("migrate-bot", help="migrate DATA_ROOT/bots/BOT_ID (the seed's semantics)",
                       **_examples("migrate-bot"))
    p.add_argument("bot_id", metavar="BOT_ID")
    p.add_argument("--data-root", required=True, type=Path, metavar="DIR")
    p.add_argument("--target", required=True, type=_target_arg, metavar="HOST:PORT")
    _add_copy_options(p)
    _add_connection_options(p)

    p = sub.add_parser("migrate-all", help="migrate every bot under DATA_ROOT/bots/",
                       description="Migrate every bot under DATA_ROOT/bots/ (bots migrated "
                       "already are listed as such). One exit code for the fleet: 0 when every "
                       "bot is ok; 3 (4) when no bot was migrated and every incomplete one could "
                       "not reach (was refused by) its container; otherwise 1 when any bot is "
                       "incomplete.", **_examples("migrate-all"))
    p.add_argument("--data-root", required=True, type=Path, metavar="DIR")
    t = p.add_mutually_exclusive_group(required=True)
    t.add_argument("--target-template", metavar="TEMPLATE", type=_template_arg,
                   help=f"HOST:PORT with {{bot_id}} in the host, e.g. '{TEMPLATE_EXAMPLE}'"
                   .replace("%", "%%"))
    t.add_argument("--targets", type=Path, metavar="FILE.json",
                   help='JSON object {"bot_id": "host:port", ...}; a key that names no bot, '
                   "or two bots with one address (one would overwrite the other's files), "
                   "is refused")
    p.add_argument("--bot-concurrency", "--bots", type=_positive_int,
                   default=DEFAULT_BOT_CONCURRENCY, metavar="N",
                   help=f"bots migrated at once (default: {DEFAULT_BOT_CONCURRENCY}; --bots is "
                   "its old name)")
    _add_copy_options(p)
    _add_connection_options(p)

    p = sub.add_parser("serve", help="run the ContainerService over a root directory",
                       **_examples("serve"))
    p.add_argument("--root", required=True, type=Path, metavar="DIR")
    p.add_argument("--listen", type=_listen_arg, default=("127.0.0.1", 9090), metavar="HOST:PORT",
                   help="address to listen on (port 0: any free port; default 127.0.0.1:9090)")
    _add_token_options(p, "bearer token every call must carry")
    p.add_argument("--no-auth", action="store_true",
                   help="serve WITHOUT a token: any client that reaches the port may run "
                   "commands (Exec); only for a server inside an isolated container; refused "
                   "on a non-loopback address unless --insecure-no-auth-on-network")
    p.add_argument("--insecure-no-auth-on-network", action="store_true",
                   help="with --no-auth: listen without token or TLS on a non-loopback "
                   "address too, as Memoh runs its server (the container's own interface, "
                   "port 9090). RISK: anyone who reaches the port runs commands as this user; "
                   "only inside an isolated container")
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
    p.add_argument("--memory-budget", type=_positive_int, default=DEFAULT_BUDGET // 2**20,
                   metavar="MIB",
                   help="MiB of request and ReadRaw data in flight across all calls; further "
                   "calls wait, and HTTP/2 flow control holds their clients back (default: "
                   f"{DEFAULT_BUDGET // 2**20})")

    p = sub.add_parser("demo", help="migrate a sample bot tree into an in-process server",
                       **_examples("demo"))
    p.add_argument("--files", type=_positive_int, default=400, metavar="N",
                   help="small files in the sample tree (default: 400)")
    p.add_argument("--json", action="store_true", help="print one JSON report on stdout")
    return parser


def client_tls(args: argparse.Namespace) -> ClientTLS | None:
    from .._tls import ClientTLS

    if not (args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name):
        return None
    return ClientTLS(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key,
                     server_hostname=args.tls_server_name)


def connect_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"tls": client_tls(args), "token": resolve_token(args), "timeout": args.timeout}


def migrate_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "dest": args.dest, "verify": args.verify, "preserve": args.preserve,
        "rename": args.rename and not args.dry_run, "dry_run": args.dry_run,
        "tar_batches": args.tar_batches, "rename_without_flush": args.rename_without_flush,
        "agent": args.agent,
    }
    if args.concurrency is not None:
        kwargs["concurrency"] = args.concurrency
    if args.chunk_size is not None:
        kwargs["chunk_size"] = args.chunk_size
    if args.stall_timeout is not None:
        kwargs["stall_timeout"] = args.stall_timeout
    return kwargs

