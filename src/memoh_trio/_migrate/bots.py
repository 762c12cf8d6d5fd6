"""Bots under ``DATA_ROOT/bots/``: one bot with the seed's semantics, or all of them."""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import stat
import time
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Literal, Protocol

import trio

from .._errors import ConfigError, MemohError, SourceError, connection_cause
from .._plan import describe_os_error, escape_name
from .._progress import Progress, bot_done, bot_progress, live_reports, start_fleet
from .._report import MigrationReport
from .._units import parse_target
from .context import (
    DEFAULT_BOT_CONCURRENCY,
    DEFAULT_CONCURRENCY,
    DEFAULT_STALL_TIMEOUT,
    MIGRATED_SUFFIX,
    Options,
    Verify,
    check_options,
    norm_dest,
)
from .preflight import check_data_root, is_empty_dir, unknown_bot
from .run import migrate_with

if TYPE_CHECKING:
    from .._client import Client


class ClientSource(Protocol):
    """Anything with ``async get(bot_id) -> Client``, such as :class:`memoh_trio.Pool`."""

    async def get(self, bot_id: str) -> Client: ...


def _bot_state(data_root: str | os.PathLike[str], bot_id: str,
               ) -> Literal["already-migrated", "nothing-to-do", "migrate"]:
    """The seed's checks, in its order: migrated already? any data? A bot id that is neither a
    directory nor a migrated one is a typo, and a data root without ``bots/`` a wrong path:
    both raise :class:`SourceError` with a hint."""
    bots_dir = check_data_root(data_root)
    src = os.path.join(bots_dir, bot_id)
    if os.path.isdir(src + MIGRATED_SUFFIX):
        return "already-migrated"
    try:
        st = os.stat(src)
    except FileNotFoundError:
        raise unknown_bot(bots_dir, bot_id) from None
    except OSError as exc:
        raise SourceError(f"cannot read source {src}: {describe_os_error(exc)}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(f"{src} is not a directory: bots are directories under {bots_dir}")
    return "nothing-to-do" if is_empty_dir(src) else "migrate"


def bot_source(data_root: str | os.PathLike[str], bot_id: str) -> str:
    """``DATA_ROOT/bots/<bot_id>`` as an absolute path."""
    return os.path.join(os.path.abspath(os.fspath(data_root)), "bots", bot_id)


def _check_bot_id(bot_id: str) -> None:
    if not bot_id or bot_id in (".", "..") or "/" in bot_id or "\0" in bot_id:
        raise ConfigError(f"not a valid bot id: {bot_id!r}")


async def migrate_bot(
    bot_id: str,
    data_root: str | os.PathLike[str],
    client_or_pool: Client | ClientSource,
    *,
    dest: str = "",
    concurrency: int = DEFAULT_CONCURRENCY,
    chunk_size: int | None = None,
    verify: Verify = "size",
    preserve: bool = True,
    rename: bool = True,
    dry_run: bool = False,
    resume: bool = True,
    progress: Progress | None = None,
    stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
    lock_wait: float = 0.0,
    tar_batches: bool = True,
    itemize: Callable[[str], None] | None = None,
    rename_without_flush: bool = False,
    agent: bool = True,
) -> MigrationReport:
    """Migrate ``DATA_ROOT/bots/<bot_id>`` with the seed's semantics.

    Already migrated (``<bot_id>.migrated`` exists) → ``status="already-migrated"``; an empty
    bot directory → ``status="nothing-to-do"``; otherwise :func:`memoh_trio.migrate` with the same
    keyword arguments. The report's ``bot_id`` is set. ``client_or_pool`` is a client, or a pool
    whose ``get(bot_id)`` gives one (only called when there is something to copy).

    Raises:
        SourceError: the data root is missing or has no ``bots/`` directory, or no bot
            ``bot_id`` exists there (neither a directory nor a ``.migrated`` one: a typo; the
            message names the nearest bot ids), or the bot directory cannot be read.
        ConfigError: an invalid bot id or option. Otherwise as :func:`memoh_trio.migrate`.
    """
    _check_bot_id(bot_id)
    src = bot_source(data_root, bot_id)
    state = _bot_state(data_root, bot_id)
    if state != "migrate":
        if progress is not None:
            progress.finish()
        return MigrationReport(source=src, dest=norm_dest(dest), status=state, bot_id=bot_id)
    get = getattr(client_or_pool, "get", None)
    client: Client = await get(bot_id) if get is not None else client_or_pool  # type: ignore[assignment]
    opts = Options(dest=dest, concurrency=concurrency, chunk_size=chunk_size, verify=verify,
                   preserve=preserve, rename=rename, dry_run=dry_run, resume=resume,
                   stall_timeout=stall_timeout, tar_batches=tar_batches,
                   rename_without_flush=rename_without_flush, agent=agent)
    report = await migrate_with(src, client, opts, progress=progress, lock_wait=lock_wait,
                                itemize=itemize)
    report.bot_id = bot_id
    return report


def list_bots(data_root: str | os.PathLike[str]) -> list[str]:
    """Bot ids under ``DATA_ROOT/bots/``: every directory ``ID`` and every ``ID.migrated`` (a bot
    migrated already, reported as such), once each; hidden ones excluded."""
    bots_dir = os.path.join(os.fspath(data_root), "bots")
    try:
        with os.scandir(bots_dir) as it:
            names = [e.name for e in it if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SourceError(f"cannot read {bots_dir}: {describe_os_error(exc)}") from None
    return sorted({n.removesuffix(MIGRATED_SUFFIX) for n in names if not n.startswith(".")}
                  - {""})


def check_targets(bots: Collection[str], addresses: Mapping[str, str] | Callable[[str], str],
                  *, dest: str = "", source: str = "--targets") -> None:
    """Refuse a fleet's addresses before anything starts (pure).

    Args:
        bots: the bot ids found (:func:`list_bots`).
        addresses: bot id → ``host:port``, a mapping (a targets file) or a function (a
            template).
        dest: the destination directory, the same for every bot of a fleet.
        source: how the operator gave the addresses, for the message.

    Raises:
        ConfigError: a key of the mapping names no bot (a typo: the message names the nearest
            bot ids), or two bots have the same address: one container, one ``dest``, so one
            bot would overwrite the other's files.
    """
    if isinstance(addresses, Mapping):
        unknown = sorted(set(addresses) - set(bots))
        if unknown:
            name = unknown[0]
            close = difflib.get_close_matches(name, sorted(set(bots) - set(addresses)), n=3,
                                              cutoff=0.6)
            hint = ("did you mean " + " or ".join(repr(n) for n in close) + "?" if close
                    else "bots found: " + (", ".join(sorted(bots)[:5]) or "none"))
            more = f" (and {len(unknown) - 1} more: {', '.join(map(repr, unknown[1:4]))})" \
                if len(unknown) > 1 else ""
            raise ConfigError(f"{source} names no bot {name!r}{more}: {hint}")
    seen: dict[tuple[str, int], str] = {}
    for bot_id in sorted(bots):
        try:
            address = (addresses[bot_id] if isinstance(addresses, Mapping)
                       else addresses(bot_id))
            key = container_key(address)
        except (KeyError, ConfigError):
            continue  # no (valid) address: that bot's report says so
        other = seen.setdefault(key, bot_id)
        if other != bot_id:
            where = f" --dest {dest!r}" if dest else " --dest (the server's root)"
            raise ConfigError(
                f"bots {other!r} and {bot_id!r} both go to {address} ({source}), into the same "
                f"directory ({where.strip()}): one would overwrite the other's files; hint: give "
                "each bot its own container, or migrate them one at a time with migrate-bot "
                "and a --dest of its own")


def container_key(address: str) -> tuple[str, int]:
    """An address as a comparable key: host names in lower case, without a trailing dot; IP
    addresses in their canonical form (pure; names are not resolved)."""
    host, port = parse_target(address)
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        host = host.lower().rstrip(".")
    return host, port


async def migrate_all(
    data_root: str | os.PathLike[str],
    targets: ClientSource | Mapping[str, str] | Callable[[str], str],
    *,
    bot_concurrency: int = DEFAULT_BOT_CONCURRENCY,
    concurrency: int = DEFAULT_CONCURRENCY,
    file_concurrency: int | None = None,
    dest: str = "",
    chunk_size: int | None = None,
    verify: Verify = "size",
    preserve: bool = True,
    rename: bool = True,
    dry_run: bool = False,
    resume: bool = True,
    progress: Progress | None = None,
    stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
    tar_batches: bool = True,
    on_report: Callable[[MigrationReport], None] | None = None,
    on_stopped: Callable[[MigrationReport], None] | None = None,
    rename_without_flush: bool = False,
    itemize: Callable[[str], None] | None = None,
    agent: bool = True,
) -> list[MigrationReport]:
    """Migrate every bot under ``DATA_ROOT/bots/``, one report per bot, in bot-id order.

    Args:
        data_root: the directory holding ``bots/``.
        targets: a pool (``get(bot_id)``), or an address map / function from which a
            :class:`memoh_trio.Pool` is built. Two bots with one address would share a
            container (and ``dest``): :func:`check_targets` refuses that and a key that names
            no bot; the CLI calls it before the run, a library caller may too.
        bot_concurrency: bots migrated at once (the CLI's ``--bot-concurrency``).
        concurrency: file streams and tar batches at once within each bot, as for
            :func:`memoh_trio.migrate` (the CLI's ``--concurrency``).
        file_concurrency: the old name of ``concurrency`` (deprecated: a DeprecationWarning).
        progress: the whole fleet's progress: files and bytes of every bot, and
            ``bots_done``/``bots_total``.
        on_report: called with each bot's report as soon as that bot is finished (reports of
            bots already finished are not lost if the run is cancelled later).
        on_stopped: called for each bot still running when the run is cancelled (Ctrl-C), as
            it stops: an incomplete report with the files and bytes it had copied (its source
            is not renamed), error ``"stopped before it finished"``, with what it had
            confirmed (copied, unchanged, failed) and the seconds it ran.
        itemize: with ``dry_run``, called with one line per entry a bot's run would send,
            as for :func:`memoh_trio.migrate`, prefixed with the bot id and ``": "``.
        dest, chunk_size, verify, preserve, rename, dry_run, resume, stall_timeout,
            tar_batches, rename_without_flush, agent: as :func:`memoh_trio.migrate`, for
            every bot.

    Returns:
        One report per bot (``bot_id`` set), in bot-id order (bots also start in that order).

    Raises:
        SourceError: the data root is missing or has no ``bots/`` directory.
        ConfigError: invalid options. One bot's failure (including a lost connection to its
            container) never stops the others: it becomes that bot's incomplete report.
    """
    if file_concurrency is not None:
        warnings.warn("migrate_all(file_concurrency=) is now concurrency= (as for migrate)",
                      DeprecationWarning, stacklevel=2)
        concurrency = file_concurrency
    if isinstance(bot_concurrency, bool) or not isinstance(bot_concurrency, int) \
            or bot_concurrency < 1:
        raise ConfigError(f"bot concurrency must be at least 1, got {bot_concurrency!r}")
    norm_dest(dest)  # a bad dest is refused before any bot starts, not by each bot
    opts = Options(dest=dest, concurrency=concurrency, chunk_size=chunk_size,
                   verify=verify, preserve=preserve, rename=rename, dry_run=dry_run,
                   resume=resume, stall_timeout=stall_timeout, tar_batches=tar_batches,
                   rename_without_flush=rename_without_flush, agent=agent)
    check_options(opts)
    check_data_root(data_root)
    bots = list_bots(data_root)
    fleet = progress if progress is not None else Progress()
    start_fleet(fleet, len(bots))
    try:
        if hasattr(targets, "get") and not isinstance(targets, Mapping):
            return await _migrate_bots(bots, data_root, targets, bot_concurrency, opts, fleet,
                                       on_report, on_stopped, itemize)
        from .._pool import Pool

        async with Pool(targets) as pool:
            return await _migrate_bots(bots, data_root, pool, bot_concurrency, opts, fleet,
                                       on_report, on_stopped, itemize)
    finally:
        fleet.finish()


#: The error of a bot's report when the fleet was stopped while it ran.
STOPPED = "stopped before it finished"
#: The error of a bot's report when the fleet was stopped before that bot's turn came.
NOT_STARTED = "not started: the run was stopped before this bot's turn"


def stopped_report(source: str, bot_id: str | None, progress: Progress | None,
                   seconds: float, error: str = STOPPED) -> MigrationReport:
    """The report of a migration stopped mid-way: incomplete (its source is not renamed), with
    what its run had confirmed so far (copied, unchanged, failed, skipped: its ledger's counts,
    not the progress line's, which counts unchanged files as done and bytes on their way), and
    ``seconds`` it ran. Nothing counted yet (stopped before its run began): zeros."""
    live = live_reports(progress) if progress is not None else []
    if len(live) > 1:  # a fleet's: the bot's own (a run's source is the real directory)
        live = [r for r in live if r.source in (source, os.path.realpath(source))]
    if live:
        r = live[-1]
        return dataclasses.replace(
            r, status="incomplete", bot_id=bot_id, renamed_to=None, error=error,
            seconds=seconds, skipped=list(r.skipped), failures=list(r.failures))
    return MigrationReport(source=source, bot_id=bot_id, status="incomplete", error=error,
                           seconds=seconds)


async def _migrate_bots(bots: Iterable[str], data_root: str | os.PathLike[str],
                        pool: ClientSource, bot_concurrency: int, opts: Options,
                        fleet: Progress, on_report: Callable[[MigrationReport], None] | None,
                        on_stopped: Callable[[MigrationReport], None] | None = None,
                        itemize: Callable[[str], None] | None = None,
                        ) -> list[MigrationReport]:
    reports: dict[str, MigrationReport] = {}
    limiter = trio.CapacityLimiter(bot_concurrency)

    async def one(bot_id: str, token: object) -> None:
        try:
            start = time.monotonic()
            progress = bot_progress(fleet)
            report: MigrationReport | None = None
            prefix = f"{escape_name(bot_id)}: "
            try:
                report = await migrate_bot(
                    bot_id, data_root, pool, progress=progress, **dataclasses.asdict(opts),
                    itemize=None if itemize is None else lambda line: itemize(prefix + line))
            except MemohError as exc:
                report = MigrationReport(
                    source=bot_source(data_root, bot_id), status="incomplete", bot_id=bot_id,
                    error=str(exc), seconds=time.monotonic() - start,
                    cause=connection_cause(exc))
            finally:
                progress.finish()
                if report is None and on_stopped is not None:  # cancelled (or a bug) mid-way
                    on_stopped(stopped_report(bot_source(data_root, bot_id), bot_id,
                                              progress, time.monotonic() - start))
            reports[bot_id] = report
            bot_done(fleet)
            if on_report is not None:
                on_report(report)
        finally:
            limiter.release_on_behalf_of(token)

    bots = list(bots)
    async with trio.open_nursery() as nursery:
        for bot_id in bots:  # started in bot-id order: a slot first, then the task
            token = object()
            await limiter.acquire_on_behalf_of(token)
            nursery.start_soon(one, bot_id, token)
    return [reports[b] for b in bots]
