"""MigrationReport: fields, ok, and the JSON shape the CLI prints."""

from __future__ import annotations

import json

from memoh_trio._report import Failure, MigrationReport, Skipped


def test_json_shape() -> None:
    r = MigrationReport(
        source="/data/bots/b1", dest="", status="incomplete", files=3, bytes=42,
        skipped=[Skipped("pipe", "named pipe (FIFO): not copied, never opened")],
        failures=[Failure("bad-\\xff", "name is not valid UTF-8")],
        error="1 entry failed", seconds=1.23456,
    )
    d = json.loads(r.to_json())
    assert d == {
        "bot_id": None, "source": "/data/bots/b1", "dest": "", "status": "incomplete",
        "renamed_to": None,
        "files": 3, "bytes": 42, "dirs": 0, "symlinks": 0, "unchanged": 0,
        "skipped": [{"path": "pipe", "reason": "named pipe (FIFO): not copied, never opened"}],
        "failures": [{"path": "bad-\\xff", "error": "name is not valid UTF-8"}],
        "error": "1 entry failed", "seconds": 1.235, "mtime_precision": None, "flushed": None,
        "cause": None, "ok": False,
    }


def test_ok_statuses() -> None:
    for status in ("migrated", "already-migrated", "nothing-to-do", "dry-run"):
        assert MigrationReport("s", status=status).ok
    assert not MigrationReport("s").ok


def test_non_ascii_paths_stay_readable() -> None:
    r = MigrationReport("s", failures=[Failure("über/ß", "x")])
    assert "über/ß" in r.to_json(indent=2)
