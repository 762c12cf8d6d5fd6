"""Pure(ish) decisions before a run, tested without sockets: the source's state (reruns, typos,
empty sources), data roots and bot ids, target templates, and what a connection probe's answer
means."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memoh_trio._diagnose import PREFACE, classify_answer, explain
from memoh_trio._errors import ConfigError, SourceError
from memoh_trio._migrate.preflight import check_data_root, source_state, unknown_bot
from memoh_trio._units import check_target_template, fill_target_template, parse_target
from memoh_trio._walk import Walker


def test_source_states(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_bytes(b"1")
    (tmp_path / "empty").mkdir()
    (tmp_path / "gone.migrated").mkdir()
    assert source_state(tmp_path / "full") == (str(tmp_path / "full"), "migrate")
    assert source_state(tmp_path / "empty")[1] == "nothing-to-do"
    assert source_state(tmp_path / "gone")[1] == "already-migrated"
    with pytest.raises(SourceError, match="does not exist"):
        source_state(tmp_path / "never")


def test_refused_sources(tmp_path: Path) -> None:
    (tmp_path / "a.migrated").mkdir()
    with pytest.raises(SourceError, match=f"rename it back to {tmp_path / 'a'}$"):
        source_state(tmp_path / "a.migrated")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_bytes(b"1")
    (tmp_path / "b.migrated").mkdir()
    with pytest.raises(SourceError, match=r"both .* exist"):
        source_state(tmp_path / "b")
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(SourceError, match="not a directory"):
        source_state(tmp_path / "f")


def test_data_roots(tmp_path: Path) -> None:
    (tmp_path / "data" / "bots" / "alpha").mkdir(parents=True)
    assert check_data_root(tmp_path / "data") == str(tmp_path / "data" / "bots")
    with pytest.raises(SourceError, match="does not exist"):
        check_data_root(tmp_path / "nope")
    with pytest.raises(SourceError, match=f"try --data-root {tmp_path / 'data'}$"):
        check_data_root(tmp_path / "data" / "bots")
    with pytest.raises(SourceError, match=r"has no bots/ directory .*right --data-root"):
        check_data_root(tmp_path)


def test_unknown_bot_names_the_nearest(tmp_path: Path) -> None:
    for name in ("alpha", "alpine.migrated", "zeta"):
        (tmp_path / name).mkdir()
    assert "did you mean 'alpha'?" in str(unknown_bot(str(tmp_path), "alpah"))
    assert "'alpine'" in str(unknown_bot(str(tmp_path), "alpin"))  # a migrated one counts
    assert "bots there: alpha, alpine, zeta" in str(unknown_bot(str(tmp_path), "q"))
    assert "holds no bots" in str(unknown_bot(str(tmp_path / "alpha"), "q"))


def test_walk_marks_a_directory_of_special_files_empty(tmp_path: Path) -> None:
    (tmp_path / "only-fifo").mkdir()
    os.mkfifo(tmp_path / "only-fifo" / "p")
    (tmp_path / "mixed").mkdir()
    os.mkfifo(tmp_path / "mixed" / "a-pipe")
    (tmp_path / "mixed" / "z-file").write_bytes(b"1")
    (tmp_path / "sock").mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "sock" / "s"))
    try:
        walker = Walker(str(tmp_path))
        entries = {e.rel: e for batch in iter(walker.next_batch, []) for e in batch}
    finally:
        s.close()
    assert entries["only-fifo"].empty_dir and entries["sock"].empty_dir
    assert not entries["mixed"].empty_dir
    assert {"only-fifo/p", "sock/s", "mixed/a-pipe", "mixed/z-file"} <= set(entries)


@given(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True))
def test_a_good_template_gives_a_target_for_any_host_label(bot_id: str) -> None:
    template = check_target_template("{bot_id}.bots.internal:9090")
    assert parse_target(fill_target_template(template, bot_id)) == (
        f"{bot_id}.bots.internal", 9090)


@pytest.mark.parametrize("template", ["HOST:{bot_id}:PORT", "h:{bot_id}", "h:9090",
                                      "{bot_id}", "{bot_id}.x:0"])
def test_bad_templates_quote_what_was_typed(template: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_target_template(template)
    assert repr(template) in str(info.value)


def test_probe_answers() -> None:
    assert PREFACE.startswith(b"PRI * HTTP/2.0")
    assert classify_answer(b"") == "closed"
    assert classify_answer(b"\x15\x03\x01\x00\x02\x02\x46") == "tls"
    assert classify_answer(b"HTTP/1.0 400 Bad request\r\n") == "http1"
    assert classify_answer(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00" + b"\x00" * 6) == "http2"
    assert classify_answer(b"SSH-2.0-OpenSSH_9.6\r\n") == "other"


def test_explanations_name_the_side_that_expects_tls() -> None:
    t = "h:1"
    assert "'bots.example' does not resolve" in str(explain("unresolved", "bots.example:9090",
                                                            client_tls=False))
    assert "expects TLS and the client spoke plaintext" in str(explain("tls", t, client_tls=False))
    assert "speaks plaintext HTTP/2 and the client expects TLS" in str(
        explain("http2", t, client_tls=True))
    assert explain("http2", t, client_tls=False) is None  # a gRPC server: nothing to add
    assert "is not a gRPC server" in str(explain("http1", t, client_tls=False))
    assert "is not a gRPC server" in str(explain("closed", t, client_tls=False))
    assert "memoh-trio serve --listen h:1" in str(explain("refused", t, client_tls=False))


def test_rename_source(tmp_path: Path) -> None:
    from memoh_trio._migrate.preflight import rename_source, source_identity

    src = tmp_path / "bot"
    src.mkdir()
    identity = source_identity(str(src))
    assert rename_source(str(src), identity) == (f"{src}.migrated", None)
    assert not src.exists() and (tmp_path / "bot.migrated").is_dir()
    # Replaced during the run: not renamed.
    src.mkdir()
    target, why = rename_source(str(src), identity)
    assert target is None and why is not None and "no longer names" in why
    assert src.is_dir()
    # The rename itself fails (the .migrated name is a non-empty directory already).
    (tmp_path / "bot.migrated" / "x").write_bytes(b"1")
    target, why = rename_source(str(src), source_identity(str(src)))
    assert target is None and why is not None and "renaming the source to" in why
    assert src.is_dir()
