"""bench.e2e.ab's table: medians per variant and same-round ratios to the stock lab."""

from __future__ import annotations

import pytest

from bench.e2e.ab import METRICS, _report, main


def _row(scale: float) -> dict[str, float]:
    return {m: scale for m in METRICS}


def test_ratios_are_taken_round_by_round() -> None:
    # Round 2 is twice as busy for everyone: same-round ratios stay 1.10, medians do not.
    results = {
        "stock": [_row(10.0), _row(20.0)],
        "before": [_row(11.0), _row(22.0)],
        "after": [_row(10.0), _row(20.0)],
    }
    text = _report(results, [1.0, 2.0, 3.0])
    line = next(ln for ln in text.splitlines() if ln.startswith("| cpu_client "))
    assert line == "| cpu_client | 15 | 16.5 | 15 | 1.100 [1.10–1.10] | 1.000 [1.00–1.00] |"
    assert "1.0, 2.0, 3.0" in text


def test_before_must_be_a_source_tree() -> None:
    with pytest.raises(SystemExit):
        main(["--before", "/nonexistent"])
