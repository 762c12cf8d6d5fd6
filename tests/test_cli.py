"""The ``memoh-trio`` command line as a user runs it: real processes, real exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from memoh_trio._cli import (
    EXIT_BUSY,
    EXIT_INCOMPLETE,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    build_parser,
    exit_code_for,
)
from memoh_trio._errors import (
    Aborted,
    ConfigError,
    MigrationBusy,
    PermissionDenied,
    SourceError,
    Unauthenticated,
    Unavailable,
)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memoh_trio", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["migrate", "/x", "--target", "nohost"], "malformed target"),
        (["migrate", "/x", "--target", "h:0"], "outside 1..65535"),
        (["migrate", "/x", "--target", "h:1", "--chunk-size", "lots"], "not a size"),
        (["migrate", "/x", "--target", "h:1", "--concurrency", "0"], "at least 1"),
        (["migrate", "/x", "--target", "h:1", "--chunk-size", "10GiB"], "too large"),
        (["migrate", "/x", "--target", "h:1", "--verify", "md5"], "invalid choice"),
        (["migrate", "/x"], "--target"),
        (["migrate-all", "--data-root", "/x"], "--target-template"),
        (["serve", "--root", "/x", "--listen", "1.2.3.4"], "listen address"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_invocations_exit_2_with_a_message(argv: list[str], message: str) -> None:
    done = run_cli(*argv)
    assert done.returncode == EXIT_USAGE
    assert message in done.stderr
    assert done.stdout == ""


def test_help_lists_commands_and_exit_codes() -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    for word in ("migrate", "migrate-bot", "migrate-all", "serve", "demo", "exit codes"):
        assert word in done.stdout


def test_parser_defaults() -> None:
    args = build_parser().parse_args(["migrate", "src", "--target", "127.0.0.1:9090"])
    assert (args.verify, args.preserve, args.rename, args.dry_run, args.json) == (
        "size", True, True, False, False,
    )
    serve = build_parser().parse_args(["serve", "--root", "/x"])
    assert (serve.durable, serve.direct_io) == (False, True)
    assert build_parser().parse_args(["serve", "--root", "/x", "--no-direct-io"]).direct_io is False


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ConfigError("x"), EXIT_USAGE),
        (SourceError("x"), EXIT_USAGE),
        (Unavailable("x"), EXIT_UNREACHABLE),
        (Unauthenticated("x"), EXIT_REFUSED),
        (PermissionDenied("x"), EXIT_REFUSED),
        (MigrationBusy("x"), EXIT_BUSY),
        (Aborted("x"), EXIT_INCOMPLETE),
    ],
)
def test_exit_code_mapping(exc: BaseException, code: int) -> None:
    assert exit_code_for(exc) == code


def test_module_and_console_script_agree(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "memoh-trio"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout == run_cli("--help").stdout.replace("__main__.py", "memoh-trio")


def test_every_command_lists_the_modules_it_imports() -> None:
    """The console script loads each command's modules up front (with the collector off): the
    table covers every command and names modules that exist."""
    import importlib

    from memoh_trio._cli.commands import COMMANDS, MODULES

    assert set(MODULES) == set(COMMANDS)
    for names in MODULES.values():
        for name in names:
            importlib.import_module(name)


def test_console_script_start_up_turns_the_collector_back_on() -> None:
    """Start-up imports with the cyclic collector off, then freezes what they built and turns
    the collector back on: the migration itself runs with it on. (A subprocess: ``gc.freeze``
    is for a process's whole life.)"""
    probe = (
        "import gc\n"
        "from memoh_trio._cli.main import _collector_off, _console_imports\n"
        "with _collector_off():\n"
        "    during = gc.isenabled()\n"
        "    _console_imports('migrate')\n"
        "print(during, gc.isenabled(), gc.get_freeze_count() > 10000)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.split() == ["False", "True", "True"]


@pytest.mark.parametrize("command", ["migrate", "migrate-bot", "migrate-all", "serve", "demo"])
def test_help_ends_with_examples_that_parse(command: str) -> None:
    """``memoh-trio COMMAND --help`` ends with examples (as ``kubectl cp --help`` does), and
    every example is an invocation the parser takes."""
    import shlex

    done = run_cli(command, "--help")
    assert done.returncode == 0
    _head, sep, examples = done.stdout.rstrip().partition("\nexamples:\n")
    assert sep and "examples:" not in examples, done.stdout
    runs = [line for line in examples.replace("\\\n", " ").splitlines()
            if line.strip().startswith("memoh-trio ")]
    assert runs, examples
    for line in runs:
        argv = shlex.split(line)[1:]
        assert argv[0] == command, line
        build_parser().parse_args(argv)  # a usage error would exit 2 here
