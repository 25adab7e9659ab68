from __future__ import annotations

from higgs.server.services.traffic import TrafficSeries


def test_rates_from_cumulative_totals_in_a_bounded_ring() -> None:
    series = TrafficSeries(max_samples=2)
    assert series.sample(100.0, 0, 0, 0, 1) is None  # baseline only
    first = series.sample(110.0, 10_000, 20_000, 2, 1)
    assert first is not None
    assert (first.rx_bps, first.tx_bps, first.open_sessions) == (1000.0, 2000.0, 2)
    series.sample(120.0, 10_000, 20_000, 2, 1)
    series.sample(130.0, 5_000, 20_000, 0, 0)  # a total that went down (restart) is no traffic
    samples = series.samples()
    assert [s.ts for s in samples] == [120.0, 130.0]
    assert samples[-1].rx_bps == 0
    assert series.as_json()[0]["ts"] == 120.0
    assert series.sample(130.0, 9, 9, 0, 0) is None  # no time passed
