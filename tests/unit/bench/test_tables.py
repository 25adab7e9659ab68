"""The e2e and control tables from known per-round values: ratios, verdicts, growth factors,
and the "not available" rows."""

from __future__ import annotations

from bench.control.__main__ import REFERENCE as CTL_REF
from bench.control.__main__ import ControlSizes, _growth_tables, _main_table, row_name
from bench.e2e.__main__ import tables
from bench.e2e.measure import E2eSizes
from bench.e2e.rows import PRODUCT_DIRECT, PRODUCT_RELAY, REFERENCE
from bench.harness import Results


def _e2e_results() -> Results:
    res = Results()
    for rnd, scale in enumerate([1.0, 0.5, 1.2]):  # a slow round scales both rows alike
        for row, tput, p50 in ((REFERENCE, 100.0, 1.0), (PRODUCT_DIRECT, 99.0, 1.1)):
            for metric in ("tcp_up", "tcp_down", "udp"):
                res.add(row, metric, tput * scale, rnd)
            res.add(row, "ping_p50", p50, rnd)
            res.add(row, "ping_p99", 2 * p50, rnd)
            for metric in ("udp_loss", "ping_loss", "cpu_client", "cpu_node", "cpu_server"):
                res.add(row, metric, 0.0, rnd)
    res.unavailable[PRODUCT_RELAY] = "not in this build yet: higgsnode"
    return res


def test_e2e_tables_give_same_round_ratios_and_verdicts() -> None:
    tput, lat, _ = tables(_e2e_results(), E2eSizes(), [REFERENCE, PRODUCT_DIRECT, PRODUCT_RELAY])
    text = tput.render()
    direct = next(r for r in tput.rows if r[0] == PRODUCT_DIRECT)
    assert direct[2] == "0.99"  # 99 / 100 in every round, whatever the round's speed
    assert direct[-1] == "met"  # >= 98 % of the reference
    relay = next(r for r in tput.rows if r[0] == PRODUCT_RELAY)
    assert relay[1] == "not available (see below)"
    assert "≥ 90% of ref" in text
    added = next(r for r in lat.rows if r[0] == PRODUCT_DIRECT)
    assert added[3] == "0.100"


def test_control_growth_shows_factors_against_the_smallest_point() -> None:
    sizes = ControlSizes(nodes=(10, 100), sessions=(1, 10), default_sessions=10)
    res = Results()
    for rnd in range(3):
        for s, rps in ((1, 100.0), (10, 400.0)):
            res.add(CTL_REF, f"S={s}:route_rps", rps * 4, rnd)
            res.add(row_name("SQLite", 100), f"S={s}:route_rps", rps, rnd)
        res.add(row_name("SQLite", 10), "S=10:route_rps", 800.0, rnd)
        res.add(row_name("SQLite", 10), "reg_s", 1.0, rnd)
        res.add(row_name("SQLite", 100), "reg_s", 20.0, rnd)
    res.unavailable[row_name("PostgreSQL", 10)] = "no cluster"
    res.unavailable[row_name("PostgreSQL", 100)] = "no cluster"
    by_s, by_n = _growth_tables(res, sizes)
    sqlite_s = next(r for r in by_s.rows if r[0] == "SQLite N=100" and r[1] == "routes/s")
    assert sqlite_s[2:] == ["100 (×1.00)", "400 (×4.00)"]
    sqlite_n = next(r for r in by_n.rows if r[0] == "SQLite" and r[1] == "routes/s")
    assert sqlite_n[2:] == ["800 (×1.00)", "400 (×0.50)"]
    per_node = next(r for r in by_n.rows if r[1] == "registration ms per node")
    assert per_node[2:] == ["100 (×1.00)", "200 (×2.00)"]  # superlinear: visible as ×2
    assert any(r[0] == "PostgreSQL" and r[1] == "not available" for r in by_n.rows)
    main = _main_table(res, sizes, [CTL_REF, "SQLite N=100", "PostgreSQL N=100"])
    assert next(r for r in main.rows if r[0] == "SQLite N=100")[2] == "0.25"
