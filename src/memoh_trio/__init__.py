"""memoh-trio: move a Memoh bot's data tree into its container over gRPC, with Trio.

The public API (``__all__``) is re-exported here; the modules behind it are private (``_name``)
and may change:

* migrate: :func:`migrate` (one directory), :func:`migrate_bot` (``DATA_ROOT/bots/<id>``, the
  seed's semantics), :func:`migrate_all` (every bot), each giving a :class:`MigrationReport`;
  :class:`Progress` to observe a run;
* the client: :func:`connect` gives a :class:`Client` with one method per RPC; :class:`Pool` holds
  one per bot; :class:`ClientTLS` for TLS;
* the server: :func:`serve` (``await nursery.start(serve, root, host, port)`` gives the
  :class:`ServerAddress`, which :func:`connect` accepts); :class:`ServerTLS`;
* errors: every error raised on purpose is a :class:`MemohError`; RPC failures are
  :class:`RPCError` subclasses by status (:class:`NotFound`, :class:`Unavailable`, ...).

Layout (the decision logic is pure and apart from I/O, as in h11). Every module:

* pure, no I/O: ``_paths`` (path confinement rules), ``_plan`` (classification and routing of
  walk entries), ``_finalize`` (the rename decision, the report status), ``_units`` (sizes and
  targets), ``_tarbatch`` (tar batches), ``_wire`` (the two bulk messages, by hand),
  ``_admission`` (which connections the server keeps when descriptors run out), ``_budget``
  (the server's bytes in flight), ``_errors`` (the exception hierarchy), ``_report`` (the
  report and its JSON), ``_defaults`` (defaults shared with the CLI's help), ``_results``
  (what the client's calls return), ``_dirindex`` (a large listing kept compact, resume's
  quick check), and
  ``_scripts/``, every container-side script and the parser of its output: ``shell`` (quoting,
  the prelude), ``probe`` (capabilities), ``records`` (``O``/``F`` records), ``tar``, ``links``,
  ``meta`` (modes, mtimes, sync), ``sha256``, ``flush`` (``sync -f`` of the destination
  instead of a global ``sync``; standalone, issue 25);
* ``_bridge/`` — the only place that touches asyncio, trio-asyncio and grpclib: ``channel``,
  ``client``, ``upload``, ``execute``, ``download``, ``reader``, ``pipe``, ``errors`` (the client
  side);
  ``server``, ``accept``, ``budget``, ``inbound``, ``server_streams`` (the server side);
  ``codec``, ``h2patch``,
  ``threads``, ``compat``, ``bp2version`` (shared); ``_proto/`` holds the generated
  betterproto2 stubs (never edit them by hand);
* the Trio client: ``_client``, ``_streaming`` (its WriteRaw and Exec procedures), ``_pool``,
  ``_tasks``; ``_tls`` (TLS contexts, also the server's);
* the Trio server: ``_server``, ``_exec``, ``_heap`` (freed memory back to the system), and
  ``_fs/``, the confined file operations:
  ``resolve`` (the no-follow walk under the root), ``read``, ``modify``, ``raw`` (WriteRaw's
  sink), ``hooks`` (fault injection), ``errors`` (gRPC status codes);
* the migrator: ``_walk``, ``_source`` (opening source files safely), ``_lock``, ``_progress``,
  and ``_migrate/``: ``run``, ``lifecycle`` (the per-file table), ``steps`` (its executor),
  ``agentsteps`` (its python3 rows by the container agent),
  ``context``, ``outcomes``, ``ledger``, ``stream``, ``place``, ``tar``, ``meta``, ``resume``,
  ``preflight``, ``bots``;
* the ``memoh-trio`` command line: ``_cli/`` (``args``: the parser; ``commands``; ``exits``:
  exit codes; ``main``), ``_display``, ``_diagnose`` (connection hints), ``_demo``, ``__main__``;
* the container agent (issue 25; the migrator's executor where python3 runs): ``_agent/``:
  ``agent`` (the stdlib-only program shipped to the container through Exec, and the frame
  codec both sides use), ``driver`` (the client's side of its protocol, pure), ``session``
  (:func:`open_agent` over a client's Exec stream, in Trio);
* ``testing`` (public, imported on its own) — an in-process server for tests of embedders.
"""


import importlib as _importlib
import typing as _typing

__version__ = "0.1.0"

# What type checkers and IDEs see; at run time a name loads on first use (``__getattr__``).
if _typing.TYPE_CHECKING:
    from ._client import DEFAULT_CHUNK_SIZE as DEFAULT_CHUNK_SIZE
    from ._client import Client as Client
    from ._client import connect as connect
    from ._errors import Aborted as Aborted
    from ._errors import AlreadyExists as AlreadyExists
    from ._errors import Cancelled as Cancelled
    from ._errors import ConfigError as ConfigError
    from ._errors import DeadlineExceeded as DeadlineExceeded
    from ._errors import FailedPrecondition as FailedPrecondition
    from ._errors import Internal as Internal
    from ._errors import InvalidArgument as InvalidArgument
    from ._errors import MemohError as MemohError
    from ._errors import MigrationBusy as MigrationBusy
    from ._errors import NotFound as NotFound
    from ._errors import PermissionDenied as PermissionDenied
    from ._errors import ResourceExhausted as ResourceExhausted
    from ._errors import RPCError as RPCError
    from ._errors import SourceChanged as SourceChanged
    from ._errors import SourceError as SourceError
    from ._errors import SourceReadError as SourceReadError
    from ._errors import Stalled as Stalled
    from ._errors import Status as Status
    from ._errors import Unauthenticated as Unauthenticated
    from ._errors import Unavailable as Unavailable
    from ._errors import Unimplemented as Unimplemented
    from ._migrate import DEFAULT_CONCURRENCY as DEFAULT_CONCURRENCY
    from ._migrate import MIGRATED_SUFFIX as MIGRATED_SUFFIX
    from ._migrate import migrate as migrate
    from ._migrate import migrate_all as migrate_all
    from ._migrate import migrate_bot as migrate_bot
    from ._pool import Pool as Pool
    from ._progress import Progress as Progress
    from ._progress import ProgressState as ProgressState
    from ._report import Failure as Failure
    from ._report import MigrationReport as MigrationReport
    from ._report import Skipped as Skipped
    from ._results import ExecResult as ExecResult
    from ._results import FileEntry as FileEntry
    from ._results import ReadFileResult as ReadFileResult
    from ._results import WriteResult as WriteResult
    from ._server import ServerAddress as ServerAddress
    from ._server import ServerHooks as ServerHooks
    from ._server import serve as serve
    from ._tls import ClientTLS as ClientTLS
    from ._tls import ServerTLS as ServerTLS

#: Public name -> the private module that defines it. Importing :mod:`memoh_trio` loads none of
#: them: ``memoh-trio --version`` must not pay for trio, grpclib and the generated stubs, and a
#: command loads only the modules it uses (``__getattr__`` below, PEP 562).
_EXPORTS: dict[str, str] = {
    "DEFAULT_CHUNK_SIZE": "._client",
    "Client": "._client",
    "connect": "._client",
    "Aborted": "._errors",
    "AlreadyExists": "._errors",
    "Cancelled": "._errors",
    "ConfigError": "._errors",
    "DeadlineExceeded": "._errors",
    "FailedPrecondition": "._errors",
    "Internal": "._errors",
    "InvalidArgument": "._errors",
    "MemohError": "._errors",
    "MigrationBusy": "._errors",
    "NotFound": "._errors",
    "PermissionDenied": "._errors",
    "ResourceExhausted": "._errors",
    "RPCError": "._errors",
    "SourceChanged": "._errors",
    "SourceError": "._errors",
    "SourceReadError": "._errors",
    "Stalled": "._errors",
    "Status": "._errors",
    "Unauthenticated": "._errors",
    "Unavailable": "._errors",
    "Unimplemented": "._errors",
    "DEFAULT_CONCURRENCY": "._migrate",
    "MIGRATED_SUFFIX": "._migrate",
    "migrate": "._migrate",
    "migrate_all": "._migrate",
    "migrate_bot": "._migrate",
    "Pool": "._pool",
    "Progress": "._progress",
    "ProgressState": "._progress",
    "Failure": "._report",
    "MigrationReport": "._report",
    "Skipped": "._report",
    "ExecResult": "._results",
    "FileEntry": "._results",
    "ReadFileResult": "._results",
    "WriteResult": "._results",
    "ServerAddress": "._server",
    "ServerHooks": "._server",
    "serve": "._server",
    "ClientTLS": "._tls",
    "ServerTLS": "._tls",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> _typing.Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
