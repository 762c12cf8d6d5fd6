"""memoh_trio._migrate.meta without sockets: when a batch is due, what goes in it, in what order,
and what :meth:`Batches.run` returns for the run to record (against a fake client's ``exec``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

from memoh_trio import _scripts
from memoh_trio._client import Client, ExecResult
from memoh_trio._migrate import meta
from memoh_trio._migrate.context import Context, Options
from memoh_trio._migrate.ledger import Ledger
from memoh_trio._plan import Action, Kind
from memoh_trio._progress import Progress, ProgressState
from memoh_trio._report import MigrationReport
from memoh_trio._scripts import Capabilities


class FakeClient:
    """``exec`` answers with the next canned result and remembers what it was asked."""

    def __init__(self, *results: ExecResult | Exception) -> None:
        self.results = list(results)
        self.calls: list[tuple[str, bytes]] = []

    async def exec(self, command: str, *, stdin: bytes = b"", **_: Any) -> ExecResult:
        self.calls.append((command, stdin))
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


def _ctx(client: object = None, *, preserve: bool = True) -> Context:
    ledger = Ledger(MigrationReport(source="/src", dest=""), Progress())
    return Context(cast(Client, client), Options(preserve=preserve), ledger,
                   trio.CapacityLimiter(1))


def _file(rel: str, depth_dirs: bool = False) -> Action:
    return Action(Kind.DIR if depth_dirs else Kind.COPY, rel, f"/src/{rel}", size=1,
                  mode=0o644, mtime_ns=1_000_000_000)


def _batches(client: object = None, *, preserve: bool = True,
             tools: meta.Tools | None = None) -> meta.Batches:
    return meta.Batches(_ctx(client, preserve=preserve), tools or meta.Tools())


async def _settled(caps: Capabilities) -> meta.Tools:
    """Tools whose python3 question is settled (an unprobed container is not asked)."""
    tools = meta.Tools()
    await tools.probe_python(_ctx(FakeClient()))
    tools.caps = caps
    return tools


# --------------------------------------------------------------------------- queues


@pytest.mark.parametrize("job", ["links", "hash", "meta"])
def test_a_batch_is_due_once_full(job: meta.Job) -> None:
    b = _batches()
    actions = [_file(f"f{i}") for i in range(meta.EXEC_BATCH * 2 + 3)]
    due = [batch for a in actions if (batch := b.add(job, a)) is not None]
    assert [len(batch.actions) for batch in due] == [meta.EXEC_BATCH, meta.EXEC_BATCH]
    assert all(batch.job == job for batch in due)
    assert due[0].actions == actions[:meta.EXEC_BATCH]
    assert due[1].actions == actions[meta.EXEC_BATCH:2 * meta.EXEC_BATCH]


def test_walk_done_takes_the_links_and_hashes_left_not_the_modes() -> None:
    b = _batches()
    link, hashed, copied = _file("l"), _file("h"), _file("c")
    assert b.add("links", link) is None
    assert b.add("hash", hashed) is None
    assert b.add("meta", copied) is None
    assert b.walk_done() == [meta.Batch("links", [link]), meta.Batch("hash", [hashed])]
    assert b.walk_done() == []  # taken
    assert b.final() == [meta.Batch("meta", [copied])]


def test_final_has_files_then_directories_deepest_first_in_exec_batches() -> None:
    b = _batches()
    files = [_file(f"f{i}") for i in range(meta.EXEC_BATCH - 1)]
    for f in files:
        assert b.add("meta", f) is None
    dirs = [_file("a", True), _file("a/b/c", True), _file("a/b", True)]
    for d in dirs:
        b.add_dir(d)
    final = b.final()
    assert [len(x.actions) for x in final] == [meta.EXEC_BATCH, 2]
    entries = [a for x in final for a in x.actions]
    assert entries == [*files, dirs[1], dirs[2], dirs[0]]
    assert b.final() == []


def test_without_preserve_no_modes_are_queued() -> None:
    b = _batches(preserve=False)
    for i in range(meta.EXEC_BATCH + 1):
        assert b.add("meta", _file(f"f{i}")) is None
    b.add_dir(_file("d", True))
    assert b.tar_copied([_file(f"t{i}") for i in range(meta.TAR_META_MIN)]) == []
    assert b.final() == []
    # Symlinks and hash checks do not depend on it.
    assert b.add("links", _file("l")) is None
    assert b.walk_done() == [meta.Batch("links", [_file("l")])]


def test_tar_copied_many_get_their_own_batch_few_join_the_queue() -> None:
    b = _batches()
    many = [_file(f"m{i}") for i in range(meta.TAR_META_MIN)]
    assert b.tar_copied(many) == [meta.Batch("meta", many)]
    few = [_file(f"f{i}") for i in range(meta.TAR_META_MIN - 1)]
    assert b.tar_copied(few) == []
    assert b.final() == [meta.Batch("meta", few)]


def test_tar_copied_few_can_fill_the_queue() -> None:
    b = _batches()
    queued = [_file(f"q{i}") for i in range(meta.EXEC_BATCH - 1)]
    for a in queued:
        b.add("meta", a)
    few = [_file("x"), _file("y")]
    assert b.tar_copied(few) == [meta.Batch("meta", [*queued, few[0]])]
    assert b.final() == [meta.Batch("meta", [few[1]])]


def test_batch_result_split() -> None:
    batch = [_file("a"), _file("b"), _file("c")]
    out = meta.BatchResult.split("links", batch, {1: "exists"}, "cannot recreate the symlink")
    assert out.done == [batch[0], batch[2]]
    assert out.failed == [(batch[1], "cannot recreate the symlink: exists")]
    assert out.resend == [] and out.precision is None


# --------------------------------------------------------------------------- running a batch


async def test_run_links_returns_done_and_failed() -> None:
    client = FakeClient(ExecResult(0, b"O 0\nF 1 a directory is there\n", b""))
    b = _batches(client, tools=await _settled(Capabilities()))
    links = [Action(Kind.SYMLINK, "l0", "/src/l0", link_target="t"),
             Action(Kind.SYMLINK, "l1", "/src/l1", link_target="t"),
             Action(Kind.SYMLINK, "l2", "/src/l2", link_target="t")]
    out = await b.run(meta.Batch("links", links))
    assert out.job == "links"
    assert out.done == [links[0]]
    assert out.failed == [
        (links[1], "cannot recreate the symlink: a directory is there"),
        (links[2], f"cannot recreate the symlink: {_scripts.NO_RECORD}"),
    ]
    assert len(client.calls) == 1  # one Exec for the batch


async def test_run_meta_reports_the_precision_used() -> None:
    caps = Capabilities(touch_s=True, probed=True)  # busybox touch: whole seconds
    client = FakeClient(ExecResult(1, b"O 0\n", b""))
    b = _batches(client, tools=await _settled(caps))
    entries = [_file("a"), _file("b")]
    out = await b.run(meta.Batch("meta", entries))
    assert out.precision == "s"
    # An O record under a non-zero exit is not believed (the shell's script ends "exit 0").
    assert out.done == []
    assert out.failed == [
        (entries[0], "cannot apply permissions/mtime: the step exited with code 1 after "
                     "reporting it done: not believed"),
        (entries[1], "cannot apply permissions/mtime: "
                     f"{_scripts.NO_RECORD} (exit code 1)")]


async def test_run_meta_without_exec_fails_every_entry() -> None:
    from memoh_trio._errors import Unimplemented

    client = FakeClient(Unimplemented("no exec", method="Exec"))
    b = _batches(client, tools=await _settled(Capabilities(touch_ns=True, probed=True)))
    entries = [_file("a"), _file("b")]
    out = await b.run(meta.Batch("meta", entries))
    assert out.done == [] and out.precision == "ns"
    assert [a for a, _ in out.failed] == entries
    assert all("does not support" in why for _, why in out.failed)


async def test_run_hash_splits_same_and_resend(tmp_path: Path) -> None:
    actions = []
    for name, data in (("same", b"one"), ("differs", b"two"), ("missing", b"three")):
        path = tmp_path / name
        path.write_bytes(data)
        st = os.lstat(path)
        actions.append(Action(Kind.COPY, name, str(path), size=st.st_size, mode=0o644,
                              mtime_ns=st.st_mtime_ns, dev=st.st_dev, ino=st.st_ino))
    odd = Action(Kind.COPY, "new\nline", str(tmp_path / "x"), size=1)  # cannot be listed
    listing = (f"{hashlib.sha256(b'one').hexdigest()}  ./same\n"
               f"{hashlib.sha256(b'other').hexdigest()}  ./differs\n").encode()
    client = FakeClient(ExecResult(0, listing, b""))
    b = _batches(client, tools=await _settled(Capabilities()))
    out = await b.run(meta.Batch("hash", [*actions, odd]))
    assert out.done == [actions[0]]
    assert sorted(a.rel for a in out.resend) == sorted(["differs", "missing", "new\nline"])
    assert out.failed == []


async def test_tools_py_move_waits_for_the_python_probe() -> None:
    tools = meta.Tools()
    tools.caps = Capabilities(probed=True)
    client = FakeClient(ExecResult(0, b"python3 ok\npython3 exe /opt/py/bin/python3\nprobed\n",
                                   b""))
    answers: list[str | None] = []

    async def ask() -> None:
        answers.append(await tools.py_move())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        assert answers == []  # still waiting for python3 to be asked
        await tools.probe_python(_ctx(client))
    assert len(client.calls) == 1
    assert answers == ["/opt/py/bin/python3"]
    assert tools.caps.probed  # the shell's tools are kept


async def test_tools_unprobed_container_is_not_asked_for_python() -> None:
    tools = meta.Tools()  # no Exec found: nothing more is asked
    client = FakeClient()
    await tools.probe_python(_ctx(client))
    assert client.calls == []
    assert await tools.py_move() is None


# --------------------------------------------------------------------------- python3, asked lazily

_PY_OK = ExecResult(0, b"python3 ok\npython3 exe /opt/py/bin/python3\nprobed\n", b"")


async def test_tools_ask_python_starts_the_probe_once_beside() -> None:
    tools = meta.Tools()
    tools.caps = Capabilities(probed=True)
    client = FakeClient(_PY_OK)
    ctx = _ctx(client)
    async with trio.open_nursery() as nursery:
        tools.ask_python(ctx, nursery)
        tools.ask_python(ctx, nursery)
    assert [c for c, _ in client.calls] == [_scripts.PY_PROBE_COMMAND]
    assert await tools.py_move() == "/opt/py/bin/python3"
    assert (await tools.settled(ctx)).python3
    assert len(client.calls) == 1  # asked already: not again


@pytest.mark.parametrize(
    ("job", "n", "caps", "asked"),
    [
        ("meta", 2, Capabilities(touch_ns=True, probed=True), False),  # the shell, at ns
        ("meta", _scripts.SHELL_META_MAX + 1, Capabilities(touch_ns=True, probed=True), True),
        ("meta", 2, Capabilities(touch_s=True, probed=True), True),  # python3 would keep ns
        ("links", 2, Capabilities(probed=True), False),
        ("links", _scripts.SHELL_META_MAX + 1, Capabilities(probed=True), True),
    ],
)
async def test_batches_ask_for_python_only_where_it_may_serve(
    job: meta.Job, n: int, caps: Capabilities, asked: bool
) -> None:
    records = "".join(f"O {i}\n" for i in range(n)).encode()
    client = FakeClient(*([_PY_OK] if asked else []), ExecResult(0, records, b""))
    tools = meta.Tools()
    tools.caps = caps
    b = _batches(client, tools=tools)
    actions = ([Action(Kind.SYMLINK, f"l{i}", f"/src/l{i}", link_target="t") for i in range(n)]
               if job == "links" else [_file(f"f{i}") for i in range(n)])
    out = await b.run(meta.Batch(job, actions))
    assert len(out.done) == n
    commands = [c for c, _ in client.calls]
    assert (_scripts.PY_PROBE_COMMAND in commands) is asked
    assert len(commands) == 1 + asked
    if asked:  # and python3 then carries the batch out
        assert commands[1].startswith("/opt/py/bin/python3 ")


async def test_tools_settled_when_the_python_probe_fails_fatally() -> None:
    # Asked by a batch after the copy (no nursery to cancel): the answer is "no python3", the
    # run has its fatal error, and nothing waits for ever.
    from memoh_trio._errors import Unavailable

    tools = meta.Tools()
    tools.caps = Capabilities(touch_ns=True, probed=True)
    ctx = _ctx(FakeClient(Unavailable("gone", method="Exec")))
    with trio.fail_after(5):
        caps = await tools.settled(ctx)
    assert not caps.python3
    assert isinstance(ctx.ledger.fatal, Unavailable)


@pytest.mark.parametrize(("state", "mark", "synced", "due"), [
    (ProgressState(bytes_done=10, bytes_total=100), 32, 0, False),  # mid-copy, below the mark
    (ProgressState(bytes_done=40, bytes_total=100), 32, 0, True),  # past the mark
    (ProgressState(bytes_done=100, bytes_total=100), 132, 40, False),  # walk still running
    (ProgressState(bytes_done=100, bytes_total=100, scanning=False), 132, 40, True),  # all sent
    (ProgressState(bytes_done=100, bytes_total=100, scanning=False), 132, 100, False),  # synced
    (ProgressState(bytes_done=90, bytes_total=100, scanning=False), 132, 40, False),  # 10 to go
    (ProgressState(scanning=False), 32, 0, False),  # nothing to send
])
def test_writeback_due(state: ProgressState, mark: int, synced: int, due: bool) -> None:
    assert meta.writeback_due(state, mark, synced) is due


def test_temporary_tokens_are_unique_and_drawn_again_after_a_fork(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from memoh_trio._migrate.context import _Names

    names = _Names()
    tokens = [names() for _ in range(5000)]
    assert len(set(tokens)) == len(tokens)
    assert all(len(t) == 16 and set(t) <= set("0123456789abcdef") for t in tokens)
    prefix = tokens[0][:8]
    assert {t[:8] for t in tokens} == {prefix}  # one urandom per process, then a counter
    monkeypatch.setattr(os, "getpid", lambda: -7)  # a forked child: another prefix
    child = [names() for _ in range(100)]
    assert not set(child) & set(tokens)
