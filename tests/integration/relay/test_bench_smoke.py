"""`python -m bench.relay --smoke` still runs end to end and prints its tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_relay_bench_smoke_prints_its_tables() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.relay", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "### Throughput" in out
    assert "| 100 B | 2 | " in out
    assert "### Added latency" in out
    assert "### Idle sessions" in out
    higgs_row = next(line for line in out.splitlines() if line.startswith("| 100 B | 2 |"))
    assert higgs_row.split("|")[3].strip() not in ("–", "0")  # datagrams went through
