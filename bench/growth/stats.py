"""The pure core of the growth benchmark: fairness, one point's summary, the tables.

A *point* is one path (direct or UDP relay) at one client count N: what each of the N
simultaneous downloads received, and the CPU seconds each side spent meanwhile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.harness import Table, fmt, percentile

__all__ = ["CPU_SIDES", "Point", "growth_table", "jain_index"]

# Who the CPU is charged to: every client host together, the node's and the server's
# namespaces (measuring tools excluded, bench/e2e/measure.py).
CPU_SIDES = ("client", "node", "server")


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index (sum x)^2 / (n * sum x^2): 1.0 when every client got the same,
    1/n when one got everything. NaN for no values or all zero (nothing to be fair about)."""
    if not values:
        return math.nan
    if any(v < 0 for v in values):
        raise ValueError(f"throughputs cannot be negative: {values}")
    squares = sum(v * v for v in values)
    if squares == 0:
        return math.nan
    return sum(values) ** 2 / (len(values) * squares)


@dataclass(frozen=True)
class Point:
    """One path at ``n`` clients: per-client Mbit/s, bytes moved, CPU seconds per side."""

    n: int
    mbit: tuple[float, ...]
    nbytes: float
    cpu_s: Mapping[str, float]

    @property
    def aggregate(self) -> float:
        return sum(self.mbit)

    @property
    def fairness(self) -> float:
        return jain_index(self.mbit)

    def cpu_per_gb(self, side: str) -> float:
        """CPU seconds ``side`` spent per GB the downloads received."""
        gb = self.nbytes / 1e9
        return self.cpu_s.get(side, 0.0) / gb if gb > 0 else math.nan


def _ratio(value: float, base: float) -> str:
    if math.isnan(value) or math.isnan(base) or base == 0:
        return "–"
    return f"{value / base:.2f}"


def growth_table(path: str, points: Sequence[Point]) -> Table:
    """One path's rows, N ascending; the ratios are to the smallest N measured (normally 1)."""
    table = Table(
        [
            "N clients",
            "aggregate Mbit/s",
            "per client min / median / max",
            "Jain's index",
            "CPU s/GB client / node / server",
            "aggregate ÷ aggregate(1)",
            "CPU/GB ÷ CPU/GB(1) client / node / server",
        ],
        f"{path}: N simultaneous iperf3 TCP downloads (-R)",
    )
    ordered = sorted(points, key=lambda p: p.n)
    if not ordered:
        return table
    base = ordered[0]
    for p in ordered:
        per = (
            f"{fmt(min(p.mbit))} / {fmt(percentile(p.mbit, 50))} / {fmt(max(p.mbit))}"
            if p.mbit
            else "–"
        )
        cpu = " / ".join(fmt(p.cpu_per_gb(s)) for s in CPU_SIDES)
        growth = " / ".join(_ratio(p.cpu_per_gb(s), base.cpu_per_gb(s)) for s in CPU_SIDES)
        table.add(
            [
                str(p.n),
                fmt(p.aggregate),
                per,
                f"{p.fairness:.3f}" if not math.isnan(p.fairness) else "–",
                cpu,
                _ratio(p.aggregate, base.aggregate),
                growth,
            ]
        )
    return table
