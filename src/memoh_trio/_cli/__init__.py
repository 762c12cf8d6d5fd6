"""The ``memoh-trio`` command line: a thin layer over the library.

It parses arguments (:mod:`.args`), calls :mod:`memoh_trio`'s public functions and prints their
reports (:mod:`.commands`), and turns outcomes into exit codes (:mod:`.exits`, :mod:`.main`). No
migration logic lives here.

Imports are lazy: ``--version`` and argument errors load none of trio, grpclib, the bridge or rich;
a command loads only what it uses. ``python -X importtime -m memoh_trio --version`` shows what a
start costs.
"""

from .args import TOKEN_ENV, build_parser, read_token_file, resolve_token
from .exits import (
    EXIT_BUSY,
    EXIT_CODES,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TERMINATED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    exit_code_for,
)
from .main import main

__all__ = [
    "EXIT_BUSY", "EXIT_CODES", "EXIT_INCOMPLETE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_REFUSED",
    "EXIT_TERMINATED", "EXIT_UNREACHABLE", "EXIT_USAGE", "TOKEN_ENV", "build_parser",
    "exit_code_for", "main", "read_token_file", "resolve_token",
]
