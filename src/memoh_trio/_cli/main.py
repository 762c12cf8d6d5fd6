"""``main``: parse, run one command under trio with SIGINT/SIGTERM handling, map the outcome to
an exit code (see :mod:`.exits`), and add a hint line to an error where we can say more."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import importlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn

from .. import _errors as errors
from .args import build_parser
from .commands import COMMANDS, MODULES, Session, emit_error, emit_reports, print_error
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
    a stopped migration prints what finished and what did not; ``serve`` stops with 0. A second
    signal stops at once: the report of what was confirmed so far, then the exit."""
    import trio

    received: list[int] = []
    code = EXIT_OK
    async with trio.open_nursery() as nursery:

        async def watch_signals(task_status: trio.TaskStatus[None]) -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()
                async for signum in signals:
                    if received:  # a second signal: stop waiting for cleanup
                        _stop_at_once(args, session, received[0], signum)
                    received.append(signum)
                    session.signal_name = signal.Signals(signum).name
                    session.stop_display()  # the message starts a clean line; no frame after
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
                          single=args.command == "migrate",
                          fleet=args.command == "migrate-all")
        return _signal_exit(received[0])
    return code


def _signal_exit(signum: int) -> int:
    return EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_TERMINATED


def _stop_at_once(args: argparse.Namespace, session: Session, first: int,
                  signum: int) -> NoReturn:
    """A second signal: report what was confirmed so far (cleanup is not waited for), exit."""
    name = signal.Signals(signum).name
    session.signal_name = signal.Signals(first).name
    print(f"memoh-trio: {name} again: stopping at once", file=sys.stderr, flush=True)
    if args.command not in ("serve", "demo") and session.planned:
        why = (f"stopped at once by a second signal ({name}): not cleaned up; entries on their "
               "way may be in the container too (a rerun checks and resumes)")
        reports = [r if r.source in session.finished else dataclasses.replace(r, error=why)
                   for r in session.partial_reports()]
        emit_reports(reports, as_json=args.json, out=sys.stdout,
                     single=args.command == "migrate", fleet=args.command == "migrate-all")
    if session.console_script:
        _leave(_signal_exit(first))
    raise _Interrupted(first)


def _spoke_grpc(session: Session) -> bool:
    """Whether the container had answered a call of this run before it failed."""
    return bool(getattr(session.client, "answered", False))


def _hint(exc: BaseException, args: argparse.Namespace, session: Session) -> str | None:
    """A second line for an error, when we can say more than the error itself."""
    import trio

    from .commands import target_hint

    target = getattr(args, "target", None)
    cause = errors.connection_cause(exc)
    if cause is None or (cause == "unreachable" and not target) or \
            isinstance(exc, errors.DeadlineExceeded):
        return None
    return trio.run(functools.partial(target_hint, cause, target or "", args,
                                      spoke_grpc=_spoke_grpc(session)))


def _fail(exc: errors.MemohError, args: argparse.Namespace, session: Session) -> int:
    print_error(str(exc))
    hint = _hint(exc, args, session)
    if hint:
        print(f"memoh-trio: hint: {hint}", file=sys.stderr, flush=True)
    code = exit_code_for(exc)
    if getattr(args, "json", False):
        emit_error(str(exc), hint, code, session.partial_reports(error=str(exc))
                   if session.planned else [])
    return code


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
    session.console_script = argv is None
    try:
        code = trio.run(_run, args, session)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except _Interrupted as exc:
        code = _signal_exit(exc.signum)
    except errors.MemohError as exc:
        code = _fail(exc, args, session)
    except BaseExceptionGroup as group:
        first = _first_leaf(group)
        if isinstance(first, _Interrupted):
            code = _signal_exit(first.signum)
        elif isinstance(first, errors.MemohError):
            code = _fail(first, args, session)
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
