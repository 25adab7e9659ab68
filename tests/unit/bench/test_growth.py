"""bench/growth's pure parts: Jain's fairness index, the growth table's ratios, the plan of
N client hosts."""

from __future__ import annotations

import argparse
import math
import subprocess
import time
from pathlib import Path

import pytest

from bench.growth.__main__ import _counts
from bench.growth.plan import MAX_CLIENTS, client_role, growth_plan
from bench.growth.stats import Point, growth_table, jain_index
from bench.growth.system import StartGate, parse_by_path


def test_jain_index_is_one_for_equal_shares_and_one_over_n_for_a_hog() -> None:
    assert jain_index([5.0, 5.0, 5.0, 5.0]) == pytest.approx(1.0)
    assert jain_index([10.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    # (1 + 3)^2 / (2 * (1 + 9)) = 16 / 20
    assert jain_index([1.0, 3.0]) == pytest.approx(0.8)
    assert jain_index([7.0]) == pytest.approx(1.0)


def test_jain_index_of_nothing_is_nan_and_negative_rates_are_refused() -> None:
    assert math.isnan(jain_index([]))
    assert math.isnan(jain_index([0.0, 0.0]))
    with pytest.raises(ValueError, match="negative"):
        jain_index([1.0, -1.0])


def test_growth_table_shows_ratios_to_the_smallest_n() -> None:
    one = Point(n=1, mbit=(100.0,), nbytes=1e9, cpu_s={"client": 2.0, "node": 4.0, "server": 0})
    ten = Point(
        n=10,
        mbit=tuple([15.0] * 5 + [5.0] * 5),
        nbytes=2e9,
        cpu_s={"client": 4.0, "node": 16.0, "server": 0.0},
    )
    text = growth_table("direct", [ten, one]).render()
    lines = [line for line in text.splitlines() if line.startswith("| 1")]
    assert lines[0].startswith("| 1 | 100 | 100 / 100 / 100 | 1.000 | 2.00 / 4.00 / 0 | 1.00 |")
    # Aggregate 100 -> 100 (1.00); node CPU/GB 4 -> 8 (2.00); client 2 -> 2 (1.00);
    # Jain of five at 15 and five at 5: 100^2 / (10 * 1250) = 0.8. Server 0/0: no ratio.
    assert lines[1] == (
        "| 10 | 100 | 5.00 / 10.0 / 15.0 | 0.800 | 2.00 / 8.00 / 0 | 1.00 | 1.00 / 2.00 / – |"
    )


def test_growth_plan_puts_n_clients_on_the_client_lan_bridge() -> None:
    plan = growth_plan(50)
    roles = [client_role(i) for i in range(1, 51)]
    assert [str(plan.host(r).address().ip) for r in (roles[0], roles[1], roles[-1])] == [
        "10.0.2.10",
        "10.0.2.11",
        "10.0.2.59",
    ]
    bridge = next(b for b in plan.bridges if b.host == "client_router")
    assert len(bridge.ports) == 50
    assert len({str(plan.host(r).address().ip) for r in roles}) == 50
    with pytest.raises(ValueError, match=r"1\.\.50"):
        growth_plan(MAX_CLIENTS + 1)


def test_client_counts_are_parsed_sorted_and_bounded() -> None:
    assert _counts("50,1,10") == (1, 10, 50)
    with pytest.raises(argparse.ArgumentTypeError):
        _counts("1,51")
    with pytest.raises(argparse.ArgumentTypeError):
        _counts("a")


def test_relay_packets_are_read_by_path_from_the_metrics_page() -> None:
    page = (
        "# HELP higgs_udp_relay_packets_total Datagrams forwarded\n"
        'higgs_udp_relay_packets_total{path="kernel"} 1234.0\n'
        'higgs_udp_relay_packets_total{path="userspace"} 7.0\n'
        'higgs_udp_relay_bytes_total{path="kernel"} 99.0\n'
        'higgs_udp_relay_flows{path="kernel"} 2.0\n'
    )
    assert parse_by_path(page, "higgs_udp_relay_packets_total") == {
        "kernel": 1234.0,
        "userspace": 7.0,
    }
    assert parse_by_path(page, "higgs_udp_relay_flows") == {"kernel": 2.0}


def test_start_gate_holds_every_command_until_release(tmp_path: Path) -> None:
    gate = StartGate(tmp_path, 3)
    marks = [tmp_path / f"ran-{i}" for i in range(3)]
    procs = [subprocess.Popen(gate.argv(i, ["touch", str(mark)])) for i, mark in enumerate(marks)]
    try:
        time.sleep(0.3)
        assert not any(m.exists() for m in marks)  # all still waiting at the gate
        gate.release(timeout=10)
        assert [p.wait(10) for p in procs] == [0, 0, 0]
        assert all(m.exists() for m in marks)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        gate.close()
    assert not list(tmp_path.glob("growth-gate-*"))
