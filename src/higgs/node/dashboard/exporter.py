"""The node's Prometheus metrics (``/metrics`` on the dashboard's loopback listener).

A collector reads the agent's state at scrape time, so nothing is counted twice and the data
path pays nothing; names are ``higgs_node_*`` (packaging/grafana/higgs.json uses them, and a
test checks the dashboard against a real scrape).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from higgs.node.dashboard.source import OwnerSource
from higgs.node.ownerstate import is_paused

__all__ = ["NodeCollector", "node_registry"]


class NodeCollector(Collector):
    def __init__(self, source: OwnerSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        status = self._source.status()
        peers = status.get("peers") or []
        up = GaugeMetricFamily("higgs_node_up", "1 while the agent runs")
        up.add_metric([], 1)
        yield up
        paused = GaugeMetricFamily("higgs_node_paused", "1 while the owner paused new sessions")
        paused.add_metric([], 1 if is_paused(self._source.settings.state_dir) else 0)
        yield paused
        yield GaugeMetricFamily("higgs_node_peers", "WireGuard peers", value=len(peers))
        yield GaugeMetricFamily(
            "higgs_node_sessions", "Sessions the node serves", value=int(status.get("sessions", 0))
        )
        rx = CounterMetricFamily(
            "higgs_node_peer_bytes",
            "Bytes of the current peers, by direction",
            labels=["direction"],
        )
        rx.add_metric(["from_clients"], sum(int(p.get("rx_bytes", 0)) for p in peers))
        rx.add_metric(["to_clients"], sum(int(p.get("tx_bytes", 0)) for p in peers))
        yield rx
        budget = self._source.budget
        yield GaugeMetricFamily(
            "higgs_node_month_used_bytes", "Bytes moved this month (UTC)", value=budget.used_bytes
        )
        yield GaugeMetricFamily(
            "higgs_node_month_cap_bytes", "Monthly volume cap (0 = none)", value=budget.cap_bytes
        )
        server = status.get("server") or {}
        yield CounterMetricFamily(
            "higgs_node_heartbeats", "Heartbeats the server accepted",
            value=int(server.get("heartbeats", 0)),
        )  # fmt: skip


def node_registry(source: OwnerSource) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(NodeCollector(source))
    return registry
