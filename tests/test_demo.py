"""The quick-start demo runs to its summary, with its own redis-server, and leaves nothing bare."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_to_its_summary_with_its_own_redis() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "posguard", "demo", "--positions", "4", "--symbols", "2", "--seed", "5"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"positions opened\s+4", out)
    assert re.search(r"positions ever left unprotected \(> \d+ s\)\s+0", out)
    assert re.search(r"positions unprotected at the end\s+0", out)
    assert "fill -> protected p99" in out
    port = re.search(r"redis-cli -p (\d+)", out)
    assert port is not None and port.group(1) != "6379"
    assert len(re.findall(r"^\[\s*\d+/4\]", out, flags=re.M)) == 4, "one progress line per position"


@pytest.mark.parametrize(("venue", "named"), [
    ("emulator", "Bybit V5 emulator through real ccxt.pro"),
    ("emulator-binance", "Binance USD-M futures emulator through real ccxt.pro"),
])
def test_demo_runs_through_real_ccxt_against_the_emulator(venue: str, named: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "posguard", "demo", "--venue", venue, "--positions", "3", "--symbols", "3"],
        capture_output=True, text=True, cwd=REPO, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert named in result.stdout
    assert re.search(r"positions opened\s+3", result.stdout)
    assert re.search(r"positions unprotected at the end\s+0", result.stdout)
