"""``main``: parse, run one command under trio with SIGINT/SIGTERM handling, map the outcome to
an exit code (see :mod:`.exits`), and add a hint line to an error where we can say more."""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn

from .. import _errors as errors
from .._units import parse_target
from .args import TOKEN_ENV, build_parser, client_tls
from .commands import COMMANDS, MODULES, Session, emit_reports, print_error
from .exits import EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, exit_code_for


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop_message(args: argparse.Namespace, name: str) -> str:
    if args.command == "serve":
        return f"memoh-trio: {name}: stopping the server"
    if args.command == "migrate-all":
        return (f"memoh-trio: {name}: stopping; finished bots keep their outcome, the others "
                "are not renamed (again: stop at once)")
    return f"memoh-trio: {name}: stopping; the source is not renamed (again: stop at once)"


async def _run(args: argparse.Namespace, session: Session) -> int:
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
            code = await COMMANDS[args.command](args, session)
        nursery.cancel_scope.cancel()
    if received:
        if args.command == "serve":
            return EXIT_OK  # a server's clean stop
        if args.command != "demo" and session.planned:
            emit_reports(session.partial_reports(), as_json=args.json, out=sys.stdout,
                          single=args.command == "migrate")
        return EXIT_INTERRUPTED if received[0] == signal.SIGINT else EXIT_TERMINATED
    return code


def _hint(exc: BaseException, args: argparse.Namespace) -> str | None:
    """A second line for an error, when we can say more than the error itself."""
    if isinstance(exc, errors.Unauthenticated):
        return ("give the server's token with --token-file F, --token or the "
                f"{TOKEN_ENV} environment variable")
    if isinstance(exc, errors.Unavailable) and getattr(args, "target", None):
        from .._diagnose import diagnose

        host, port = parse_target(args.target)
        try:
            import trio

            return trio.run(functools.partial(diagnose, host, port,
                                              client_tls=client_tls(args) is not None))
        except (OSError, errors.MemohError):
            return None
    return None


def _fail(exc: errors.MemohError, args: argparse.Namespace) -> int:
    print_error(str(exc))
    hint = _hint(exc, args)
    if hint:
        print(f"memoh-trio: hint: {hint}", file=sys.stderr, flush=True)
    return exit_code_for(exc)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the ``memoh-trio`` console script (``argv``: for a caller that runs it
    in-process; it then ends with ``SystemExit`` as usual)."""
    if argv is None:
        with _collector_off():
            args = build_parser().parse_args()
            _console_imports(args.command)
    else:
        args = build_parser().parse_args(argv)
    import trio

    session = Session(args)
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
    if argv is None:
        _leave(code)
    sys.exit(code)


@contextlib.contextmanager
def _collector_off() -> Iterator[None]:
    """Start-up of the console script: import with the cyclic garbage collector off, then
    move what the imports built out of its reach (``gc.freeze``) and turn it back on.

    Imports build ~100,000 long-lived objects (modules, classes, functions) and no garbage;
    with the collector on, the allocations trigger collections that walk them again and again
    (12 ms of a 0.15 s start here); frozen, the collections of the run skip them too."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def _console_imports(command: str) -> None:
    """Import the modules ``command`` uses (:data:`.commands.MODULES`), betterproto2's version
    read without ``importlib.metadata`` (:mod:`memoh_trio._bridge.bp2version`: 7-10 ms of the
    console script's start). Only here: a process that embeds the library imports betterproto2
    the normal way, with no ``__import__`` of ours in between."""
    from .._bridge import bp2version

    bp2version.install()
    for name in MODULES[command]:
        importlib.import_module(name)


def _leave(code: int) -> NoReturn:
    """End the console script: flush our output, then exit at once, skipping the interpreter's
    teardown (the migration is over and reported; tearing down trio, asyncio, grpclib and the
    rest took ~25 ms of every run's wall time, 2 ms with this). Nothing of ours runs at exit:
    no atexit handler, no buffered file but stdout/stderr, worker threads are daemons."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`... | head`)
            stream.flush()
    os._exit(code)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
