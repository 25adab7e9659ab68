"""`python -m bench --smoke` runs every benchmark at tiny sizes and prints its tables, so the
benchmarks cannot rot. No figure is asserted: only that each part ran and printed a table
with measured numbers where the part is available in this build."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.control.servers import server_unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.root, pytest.mark.timeout(900)]

_NUMBER = r"[0-9][0-9.,]*[kM]?"


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip("|").split("|")]


def _row(text: str, name: str) -> list[str]:
    """The cells of the first table row that starts with ``name``."""
    for line in text.splitlines():
        if line.startswith(f"| {name} |"):
            return _cells(line)
    raise AssertionError(f"no table row {name!r} in the report:\n{text}")


ROOT = Path(__file__).resolve().parents[3]


def test_smoke_run_prints_every_table(tmp_path: Path) -> None:
    # A process of its own, as `make bench` runs it: the benchmark installs its own signal
    # handlers and builds labs, which must not leak into the test runner.
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--results", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = result.stdout
    written = list(tmp_path.glob("report-*-smoke.md"))
    assert len(written) == 1
    assert written[0].read_text().strip() == out.strip()
    for section in (
        "## End to end",
        "## Relay",
        "## Control plane",
        "## Path bring-up",
        "## Profile",
        "## Growth (bench/growth",
    ):
        assert section in out
    assert "Failed:" not in out

    # e2e: the stock WireGuard reference carried TCP both ways, UDP and pings.
    ref = _row(out, "stock wireguard-go (reference)")
    assert re.fullmatch(_NUMBER, ref[1]), ref
    assert re.fullmatch(_NUMBER, ref[3]), ref
    # The product rows say why they are missing, or carry numbers: never a blank.
    for row in ("Higgs.net direct", "Higgs.net relay"):
        cells = _row(out, row)
        assert cells[1].startswith("not available") or re.fullmatch(_NUMBER, cells[1]), cells

    # relay (its own process, its tables demoted one level): datagrams went through the
    # Higgs.net relay. This is the only run of the relay smoke in the suite.
    assert "bench/relay exited" not in out
    for table in ("#### Throughput", "#### Added latency", "#### Idle sessions"):
        assert table in out
    higgs_row = _row(out, "100 B | 2")
    assert higgs_row[2] not in ("–", "0"), higgs_row

    # control: the FastAPI reference answered routes; the real server too when it is built.
    assert re.match(_NUMBER, _row(out, "reference: FastAPI, fixed answer")[1])
    sqlite = _row(out, "SQLite N=4")
    if server_unavailable() is None:
        assert re.match(_NUMBER, sqlite[1]), sqlite
        assert "#### Self time by package" in out
    else:
        assert sqlite[1].startswith("not available")

    # udprelay (issue 11): the product's forwarder and the kernel path forwarded datagrams.
    assert "## UDP relay" in out
    assert re.match(_NUMBER, _row(out, "Higgs.net userspace forwarder")[1])
    assert re.match(_NUMBER, _row(out, "UDP relay, kernel (nft DNAT/SNAT)")[1])

    # punch (issue 12): a session came up on the UDP relay and was upgraded to the punched
    # path, with both times and the longest ping gap across the switch measured.
    assert "## Path bring-up and upgrade" in out
    punched = _row(out, "0")
    assert all(re.fullmatch(_NUMBER, c) for c in punched[1:]), punched

    # growth (issue 13 item 4): both paths carried N = 1 and 2 simultaneous downloads, each
    # row with an aggregate and a Jain's index.
    growth = out[out.index("\n## Growth (bench/growth") :].split("\n## ", 2)[1]
    for title in ("#### direct", "#### UDP relay"):
        assert title in growth, growth
    rows = [_cells(line) for line in growth.splitlines() if line.startswith("| 2 |")]
    assert len(rows) == 2, growth
    for cells in rows:
        assert re.fullmatch(_NUMBER, cells[1]), cells
        assert re.fullmatch(r"[01]\.[0-9]{3}", cells[3]), cells
    assert "failed" not in growth
