"""The server's own small time series for the dashboard's traffic page.

A bounded ring of samples taken every ``interval_s`` (default: one hour at 10 s) in memory:
the dashboard shows recent traffic, long-term history is Prometheus's job (docs/dashboard.md).
:class:`TrafficSeries` is pure; the server's sampling task feeds it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["TrafficSample", "TrafficSeries"]


@dataclass(frozen=True, slots=True)
class TrafficSample:
    ts: float  # unix time
    rx_bps: float  # bytes per second clients sent through nodes (node's rx)
    tx_bps: float  # bytes per second nodes sent to clients
    open_sessions: int
    nodes_online: int


class TrafficSeries:
    def __init__(self, max_samples: int = 360) -> None:
        self._samples: deque[TrafficSample] = deque(maxlen=max_samples)
        self._last: tuple[float, int, int] | None = None

    def sample(
        self, now: float, total_rx: int, total_tx: int, open_sessions: int, nodes_online: int
    ) -> TrafficSample | None:
        """Records rates from cumulative byte totals; the first call only sets the baseline."""
        last, self._last = self._last, (now, total_rx, total_tx)
        if last is None or now <= last[0]:
            return None
        span = now - last[0]
        sample = TrafficSample(
            ts=now,
            rx_bps=max(0, total_rx - last[1]) / span,
            tx_bps=max(0, total_tx - last[2]) / span,
            open_sessions=open_sessions,
            nodes_online=nodes_online,
        )
        self._samples.append(sample)
        return sample

    def samples(self) -> list[TrafficSample]:
        return list(self._samples)

    def as_json(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self._samples]
