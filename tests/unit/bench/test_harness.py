"""The benchmark harness: statistics, same-round ratios, /proc sampling, tables, reports."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

from bench.harness import (
    Budget,
    Case,
    Report,
    Results,
    Section,
    Table,
    Unavailable,
    cpu_seconds,
    fmt,
    percentile,
    rss_bytes,
    run_rounds,
    sample_procs,
)


def test_percentile_interpolates_and_handles_edges() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))


def test_fmt_three_significant_digits() -> None:
    assert fmt(0.123456) == "0.123"
    assert fmt(12.345) == "12.3"
    assert fmt(1234.5) == "1,234"
    assert fmt(234_567.0) == "234.6k"
    assert fmt(2_345_678.0) == "2.35M"
    assert fmt(None) == "–"
    assert fmt(float("nan")) == "–"
    assert fmt(0.0) == "0"


def test_ratio_is_the_median_of_same_round_ratios() -> None:
    res = Results()
    # Round 2 is slow for both: the same-round ratio stays 2 where a ratio of medians would not.
    for rnd, (ref, cand) in enumerate([(100.0, 200.0), (10.0, 20.0), (90.0, 180.0)]):
        res.add("ref", "x", ref, rnd)
        res.add("cand", "x", cand, rnd)
    assert res.ratio("cand", "x", "ref") == pytest.approx(2.0)
    assert res.difference("cand", "x", "ref") == pytest.approx(90.0)
    assert res.median("cand", "x") == 180.0
    assert res.spread("cand", "x") == (20.0, 200.0)
    assert res.cell("cand", "x") == "180 [20.0–200]"


def test_run_rounds_shuffles_records_unavailable_and_errors() -> None:
    order: list[str] = []

    def ok(name: str) -> Case:
        def run() -> dict[str, float]:
            order.append(name)
            return {"v": float(len(order))}

        return Case(name, run)

    def broken() -> dict[str, float]:
        raise RuntimeError("boom")

    def missing() -> dict[str, float]:
        raise Unavailable("not built")

    cases = [ok("a"), ok("b"), ok("c"), Case("bad", broken), Case("gone", missing)]
    cases.append(Case("skip", broken, unavailable="no server"))
    res = run_rounds(cases, rounds=4, seed=1, label="t")
    assert sorted(order) == sorted(["a", "b", "c"] * 4)
    firsts = {tuple(order[i : i + 3]) for i in range(0, 12, 3)}
    assert len(firsts) > 1, "the order within rounds never changed"
    assert len(res.rounds("a", "v")) == 4
    assert res.unavailable == {"gone": "not built", "skip": "no server"}
    assert len(res.errors["bad"]) == 4
    assert res.cell("skip", "v") == "n/a"


def test_budget_bounds_count_and_time() -> None:
    assert list(Budget(count=3, seconds=60)) == [0, 1, 2]
    b = Budget(count=10**9, seconds=0.05)
    n = sum(1 for _ in b)
    assert b.expired()
    assert n > 0


def test_cpu_seconds_and_rss_of_this_process() -> None:
    before = cpu_seconds(os.getpid())
    t = time.process_time()
    while time.process_time() - t < 0.2:
        pass
    assert cpu_seconds(os.getpid()) - before >= 0.1
    assert rss_bytes(os.getpid()) > 1024 * 1024
    sample = sample_procs([os.getpid(), 999_999_999])
    assert list(sample.cpu) == [os.getpid()]


def test_table_and_report_render_markdown(tmp_path: Path) -> None:
    t = Table(["row", "a|b"], "Title")
    t.add(["x", "1"])
    with pytest.raises(ValueError, match="2 columns"):
        t.add(["only one"])
    report = Report("Bench", smoke=True)
    report.add(Section("Part", text="hello", tables=[t], notes=["why"]))
    text = report.render()
    assert "| row | a\\|b |\n|---|---|\n| x | 1 |" in text
    assert "## Part" in text
    assert "- why" in text
    assert "smoke run" in text
    path = report.write(tmp_path)
    assert path.name.startswith("report-")
    assert path.read_text() == text
