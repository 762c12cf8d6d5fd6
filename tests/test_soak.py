"""The soak run (scripts/soak.py) as a marked test: excluded from the default run (``-m soak``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "soak.py"


@pytest.mark.soak
def test_soak_twenty_rounds_lose_nothing() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--rounds", "20", "--time-limit", "900"],
                          capture_output=True, text=True, timeout=1200, check=False)
    print(proc.stdout)
    assert "files lost: 0" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr
