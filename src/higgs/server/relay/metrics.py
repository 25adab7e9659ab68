"""Relay metrics, read from plain integers at scrape time.

The data path counts with ``+=`` on ints; a prometheus ``Counter.inc()`` per frame takes a
lock and would cost more than forwarding the frame. A custom collector turns the ints into
metric families only when ``/metrics`` is scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from higgs.protocol.relay import DropReason

__all__ = ["RelayCounters", "RelayMetricsCollector"]

LINK_KINDS = ("node", "session")
# missing: no bearer token at all; unknown: a token that names no node (session) we know
REFUSAL_REASONS = ("missing", "unknown")
TO_NODE = "client_to_node"
TO_CLIENT = "node_to_client"


Totals = Callable[[], tuple[int, int, int, int]]


@dataclass(slots=True)
class RelayCounters:
    """Links open and frames dropped; traffic is counted per session (see RelayTables)."""

    node_links: int = 0
    session_links: int = 0
    drops: dict[DropReason, int] = field(default_factory=lambda: dict.fromkeys(DropReason, 0))
    # Upgrades refused with 401, by (link kind, reason): the series exist from the start.
    refused: dict[tuple[str, str], int] = field(
        default_factory=lambda: {(k, r): 0 for k in LINK_KINDS for r in REFUSAL_REASONS}
    )


class RelayMetricsCollector(Collector):
    """``higgs_relay_*`` families; counts frames for drops (a frame may hold several datagrams)."""

    def __init__(self, counters: RelayCounters, totals: Totals) -> None:
        self._c = counters
        self._totals = totals

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = self._c
        up_datagrams, up_bytes, down_datagrams, down_bytes = self._totals()
        dropped = CounterMetricFamily(
            "higgs_relay_dropped", "Relay frames dropped, by reason", labels=["reason"]
        )
        for reason, value in c.drops.items():
            dropped.add_metric([reason.value], value)
        yield dropped
        refused = CounterMetricFamily(
            "higgs_relay_upgrades_refused",
            "Relay WebSocket upgrades refused with 401, by link kind and reason",
            labels=["link", "reason"],
        )
        for (kind, why), value in c.refused.items():
            refused.add_metric([kind, why], value)
        yield refused
        datagrams = CounterMetricFamily(
            "higgs_relay_datagrams", "WireGuard datagrams forwarded", labels=["direction"]
        )
        datagrams.add_metric([TO_NODE], up_datagrams)
        datagrams.add_metric([TO_CLIENT], down_datagrams)
        yield datagrams
        sent = CounterMetricFamily(
            "higgs_relay_bytes", "Relay frame payload bytes forwarded", labels=["direction"]
        )
        sent.add_metric([TO_NODE], up_bytes)
        sent.add_metric([TO_CLIENT], down_bytes)
        yield sent
        links = GaugeMetricFamily("higgs_relay_links", "Open relay links", labels=["kind"])
        links.add_metric(["node"], c.node_links)
        links.add_metric(["session"], c.session_links)
        yield links
