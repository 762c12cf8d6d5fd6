"""memoh_trio._streaming without sockets: what a WriteRaw source becomes, and the stall watchdog
(on Trio's autojump clock)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from memoh_trio import _errors
from memoh_trio._streaming import Watchdog, source_spec


async def _chunks() -> AsyncIterator[bytes]:
    yield b"x"


def test_source_spec_kinds(tmp_path: Path) -> None:
    spec, helpers = source_spec(b"abc")
    assert bytes(spec.data or b"") == b"abc" and helpers == []
    spec, helpers = source_spec(tmp_path / "f")
    assert spec.path == str(tmp_path / "f") and helpers == []
    spec, helpers = source_spec(str(tmp_path / "g"))
    assert spec.path == str(tmp_path / "g")
    f = io.BytesIO(b"1")
    spec, helpers = source_spec(f)
    assert spec.file is f and helpers == []
    spec, helpers = source_spec(_chunks())
    assert spec.pipe is not None and len(helpers) == 1  # the pump runs beside the call
    with pytest.raises(TypeError, match="cannot stream a int"):
        source_spec(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", [0, -1.0])
async def test_watchdog_refuses_a_nonpositive_timeout(seconds: float) -> None:
    with pytest.raises(_errors.ConfigError, match="stall_timeout must be > 0"):
        Watchdog(seconds, None)


async def test_watchdog_cancels_only_after_a_quiet_period(
        autojump_clock: trio.testing.MockClock) -> None:
    seen: list[int] = []
    dog = Watchdog(10.0, seen.append)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dog.watch)
        with dog.scope:
            for _ in range(5):  # 5 chunks, 9 s apart: never 10 s without one
                await trio.sleep(9)
                dog.progress(100)
            assert not dog.stalled
            await trio.sleep_forever()
    assert dog.stalled and dog.scope.cancelled_caught
    assert seen == [100] * 5
    assert trio.current_time() == pytest.approx(55.0)
