"""Bots under ``DATA_ROOT/bots/``: one bot with the seed's semantics, or all of them."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Literal, Protocol

import trio

from .._errors import ConfigError, MemohError, SourceError
from .._plan import describe_os_error
from .._progress import Progress
from .._report import MigrationReport
from .context import DEFAULT_BOT_CONCURRENCY, DEFAULT_CONCURRENCY, MIGRATED_SUFFIX, Options
from .run import check_options, migrate

if TYPE_CHECKING:
    from .._client import Client


class ClientSource(Protocol):
    """Anything with ``async get(bot_id) -> Client``, such as :class:`memoh_trio.Pool`."""

    async def get(self, bot_id: str) -> Client: ...


def _bot_state(src: str) -> Literal["already-migrated", "nothing-to-do", "migrate"]:
    """The seed's checks, in its order: migrated already? any data?"""
    if os.path.isdir(src + MIGRATED_SUFFIX):
        return "already-migrated"
    try:
        st = os.stat(src)
        if not stat.S_ISDIR(st.st_mode):
            return "nothing-to-do"
        with os.scandir(src) as it:
            empty = next(it, None) is None
    except FileNotFoundError:
        return "nothing-to-do"
    except OSError as exc:
        raise SourceError(f"cannot read source {src}: {describe_os_error(exc)}") from None
    return "nothing-to-do" if empty else "migrate"


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
    **opts: object,
) -> MigrationReport:
    """Migrate ``DATA_ROOT/bots/<bot_id>`` with the seed's semantics.

    Already migrated (``<bot_id>.migrated`` exists) → ``status="already-migrated"``; no source
    directory, or an empty one → ``status="nothing-to-do"``; otherwise :func:`migrate` with
    ``opts``. ``client_or_pool`` is a client, or a pool whose ``get(bot_id)`` gives one.

    Raises:
        as :func:`migrate`; SourceError if the bot directory cannot be read.
    """
    _check_bot_id(bot_id)
    src = bot_source(data_root, bot_id)
    state = _bot_state(src)
    if state != "migrate":
        progress = opts.get("progress")
        if isinstance(progress, Progress):
            progress.finish()
        return MigrationReport(source=src, status=state)
    get = getattr(client_or_pool, "get", None)
    client: Client = await get(bot_id) if get is not None else client_or_pool  # type: ignore[assignment]
    return await migrate(src, client, **opts)  # type: ignore[arg-type]


def list_bots(data_root: str | os.PathLike[str]) -> list[str]:
    """Bot ids under ``DATA_ROOT/bots/``: directories, ``.migrated`` and hidden ones excluded."""
    bots_dir = os.path.join(os.fspath(data_root), "bots")
    try:
        with os.scandir(bots_dir) as it:
            names = [e.name for e in it if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SourceError(f"cannot read {bots_dir}: {describe_os_error(exc)}") from None
    return sorted(n for n in names if not n.startswith(".") and not n.endswith(MIGRATED_SUFFIX))


async def migrate_all(
    data_root: str | os.PathLike[str],
    targets: ClientSource | Mapping[str, str] | Callable[[str], str],
    *,
    bot_concurrency: int = DEFAULT_BOT_CONCURRENCY,
    file_concurrency: int = DEFAULT_CONCURRENCY,
    **opts: object,
) -> list[MigrationReport]:
    """Migrate every bot under ``DATA_ROOT/bots/``, one report per bot, in bot-id order.

    ``targets`` is a pool (``get(bot_id)``), or an address map / function from which a
    :class:`memoh_trio.Pool` is built. At most ``bot_concurrency`` bots and, within each,
    ``file_concurrency`` file streams run at once. One bot's failure (including a lost connection
    to its container) never stops the others: it becomes that bot's incomplete report.
    """
    if isinstance(bot_concurrency, bool) or not isinstance(bot_concurrency, int) \
            or bot_concurrency < 1:
        raise ConfigError(f"bot concurrency must be at least 1, got {bot_concurrency!r}")
    verify = str(opts.get("verify", "size"))
    check_options(Options(concurrency=file_concurrency, verify=verify))  # type: ignore[arg-type]
    opts.pop("progress", None)
    bots = list_bots(data_root)
    if hasattr(targets, "get") and not isinstance(targets, Mapping):
        return await _migrate_bots(bots, data_root, targets, bot_concurrency, file_concurrency,
                                   opts)
    from .._pool import Pool

    async with Pool(targets) as pool:
        return await _migrate_bots(bots, data_root, pool, bot_concurrency, file_concurrency, opts)


async def _migrate_bots(bots: Iterable[str], data_root: str | os.PathLike[str],
                        pool: ClientSource, bot_concurrency: int, file_concurrency: int,
                        opts: dict[str, object]) -> list[MigrationReport]:
    reports: dict[str, MigrationReport] = {}
    limiter = trio.CapacityLimiter(bot_concurrency)

    async def one(bot_id: str) -> None:
        async with limiter:
            start = time.monotonic()
            try:
                reports[bot_id] = await migrate_bot(bot_id, data_root, pool,
                                                     concurrency=file_concurrency, **opts)
            except MemohError as exc:
                reports[bot_id] = MigrationReport(
                    source=bot_source(data_root, bot_id), status="incomplete",
                    error=str(exc), seconds=time.monotonic() - start)

    bots = list(bots)
    async with trio.open_nursery() as nursery:
        for bot_id in bots:
            nursery.start_soon(one, bot_id)
    return [reports[b] for b in bots]
