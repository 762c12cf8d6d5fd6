"""The library surface an embedder meets: ``__all__`` and ``help()``, docstrings, typed keyword
arguments (a typo is a TypeError and a mypy error), ``connect()`` taking what ``serve`` gives,
and a progress API without third-party types."""

from __future__ import annotations

import functools
import inspect
import pydoc
from pathlib import Path

import pytest
import trio
import trio.testing

import memoh_trio


def test_all_lists_every_public_name_and_help_shows_them() -> None:
    public = {n for n in dir(memoh_trio) if not n.startswith("_")
              and not inspect.ismodule(getattr(memoh_trio, n))}  # memoh_trio.testing
    assert set(memoh_trio.__all__) == public
    text = pydoc.render_doc(memoh_trio, renderer=pydoc.plaintext)  # type: ignore[attr-defined]
    for name in ("migrate_all", "migrate_bot", "connect", "serve", "MigrationReport", "Progress"):
        assert name in text


def test_every_public_function_class_and_method_has_a_docstring() -> None:
    missing = []
    for name in memoh_trio.__all__:
        obj = getattr(memoh_trio, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not inspect.getdoc(obj):
            missing.append(name)
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            for attr, value in vars(obj).items():
                fn = value.fget if isinstance(value, property) else value
                if not attr.startswith("_") and callable(fn) and not fn.__doc__:
                    missing.append(f"{name}.{attr}")
    assert missing == []


async def test_keyword_typo_is_a_type_error(tmp_path: Path) -> None:
    (tmp_path / "bots" / "b").mkdir(parents=True)
    # What mypy refuses (the next test), Python refuses too.
    for call in (
        functools.partial(memoh_trio.migrate_bot, "b", tmp_path, object(),  # type: ignore[call-arg,arg-type]
                          concurency=3),
        functools.partial(memoh_trio.migrate_all, tmp_path, {},  # type: ignore[call-arg]
                          concurency=3),
        functools.partial(memoh_trio.migrate, tmp_path, object(),  # type: ignore[call-arg,arg-type]
                          concurency=3),
    ):
        with pytest.raises(TypeError, match="concurency"):
            await call()


def test_keyword_typo_is_a_mypy_error(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api")
    snippet = tmp_path / "typo.py"
    snippet.write_text(
        "import memoh_trio\n"
        "async def f(pool: memoh_trio.Pool) -> None:\n"
        "    await memoh_trio.migrate_all('/data', pool, concurency=3)\n"
        "    await memoh_trio.migrate_bot('b', '/data', pool, concurency=3)\n"
        "    await memoh_trio.migrate_bot('b', '/data', pool, concurrency=3, verify='md5')\n")
    out, _err, code = api.run(["--no-incremental", "--follow-imports=silent",
                               "--cache-dir=/dev/null", str(snippet)])
    assert code == 1, out
    assert out.count('Unexpected keyword argument "concurency"') == 2, out
    assert 'Argument "verify"' in out, out


async def test_connect_accepts_the_address_serve_returns(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(functools.partial(memoh_trio.serve, tmp_path, "127.0.0.1",
                                                     0, token="t"))
        assert isinstance(addr, memoh_trio.ServerAddress)
        async with memoh_trio.connect(addr, token="t") as client:
            await client.mkdir("hello")
        nursery.cancel_scope.cancel()
    assert (tmp_path / "hello").is_dir()


async def test_progress_without_trio_util(tmp_path: Path) -> None:
    progress = memoh_trio.Progress()
    seen: list[memoh_trio.ProgressState] = []

    async def watch() -> None:
        async for state in progress.changes():
            seen.append(state)
            if state.finished:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await trio.testing.wait_all_tasks_blocked()
        progress.found(2, 10)
        await progress.wait(lambda s: s.files_total == 2)
        progress.file_done(10)
        await trio.testing.wait_all_tasks_blocked()
        progress.finish()
    assert seen[-1].finished and seen[-1].files_done == 1 and seen[-1].bytes_done == 10


def test_one_options_type_for_the_three_entry_points() -> None:
    """``migrate``, ``migrate_bot`` and ``migrate_all`` build one :class:`Options` from their
    keyword arguments: each option of the type is a keyword of each, by the same name and with
    the same default, and nothing else but the per-call ones (progress, lock, itemize, fleet)
    and ``migrate_all``'s deprecated ``file_concurrency`` (the old name of ``concurrency``)."""
    import dataclasses
    import inspect

    from memoh_trio._migrate import bots, run
    from memoh_trio._migrate.context import Options

    fields = {f.name: f.default for f in dataclasses.fields(Options)}
    per_call = {"progress", "lock_wait", "itemize", "on_report", "on_stopped",
                "bot_concurrency", "file_concurrency"}
    for fn in (run.migrate, bots.migrate_bot, bots.migrate_all):
        params = {n: p.default for n, p in inspect.signature(fn).parameters.items()
                  if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in per_call}
        assert params == fields, fn.__name__
