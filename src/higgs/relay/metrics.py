"""UDP relay metrics: plain integers on the data path, metric families at scrape time.

Families: ``higgs_udp_relay_packets_total{path}`` / ``..._bytes_total{path}`` (path ``kernel``
read from the nft counter, ``userspace`` counted by the forwarder), ``..._binds_total``,
``..._rebinds_total``, ``..._dropped_total{reason}``, ``..._ports{state=leased|free}``,
``..._flows{path=kernel|userspace}`` (sessions with both legs bound, by who forwards them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["RelayStats", "UdpRelayCollector", "serve_metrics"]


@dataclass(slots=True)
class RelayStats:
    user_packets: int = 0
    user_bytes: int = 0
    binds: int = 0
    rebinds: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    ports_leased: int = 0
    ports_total: int = 0
    flows_kernel: int = 0  # bound sessions the kernel forwards
    flows_userspace: int = 0  # bound sessions the forwarder thread carries

    def drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1


def serve_metrics(collector: Collector, listen: str) -> Callable[[], None]:
    """``/metrics`` of the relay alone on ``HOST:PORT`` (a thread); returns its stop."""
    from prometheus_client import CollectorRegistry, start_http_server

    host, _, port = listen.rpartition(":")
    registry = CollectorRegistry()
    registry.register(collector)
    server, thread = start_http_server(
        int(port), addr=host.strip("[]") or "0.0.0.0", registry=registry
    )

    def stop() -> None:
        server.shutdown()
        thread.join(timeout=5)

    return stop


class UdpRelayCollector(Collector):
    def __init__(self, stats: RelayStats, kernel: Callable[[], tuple[int, int]]) -> None:
        self._stats, self._kernel = stats, kernel

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self._stats
        k_packets, k_bytes = self._kernel()
        packets = CounterMetricFamily(
            "higgs_udp_relay_packets", "Datagrams forwarded", labels=["path"]
        )
        packets.add_metric(["kernel"], k_packets)
        packets.add_metric(["userspace"], s.user_packets)
        yield packets
        octets = CounterMetricFamily("higgs_udp_relay_bytes", "Bytes forwarded", labels=["path"])
        octets.add_metric(["kernel"], k_bytes)
        octets.add_metric(["userspace"], s.user_bytes)
        yield octets
        yield CounterMetricFamily("higgs_udp_relay_binds", "Sessions bound", value=s.binds)
        yield CounterMetricFamily("higgs_udp_relay_rebinds", "Legs rebound", value=s.rebinds)
        drops = CounterMetricFamily(
            "higgs_udp_relay_dropped", "Datagrams dropped", labels=["reason"]
        )
        for reason, count in sorted(s.drops.items()):
            drops.add_metric([reason], count)
        yield drops
        ports = GaugeMetricFamily("higgs_udp_relay_ports", "Relay ports", labels=["state"])
        ports.add_metric(["leased"], s.ports_leased)
        ports.add_metric(["free"], max(0, s.ports_total - s.ports_leased))
        yield ports
        flows = GaugeMetricFamily("higgs_udp_relay_flows", "Bound sessions", labels=["path"])
        flows.add_metric(["kernel"], s.flows_kernel)
        flows.add_metric(["userspace"], s.flows_userspace)
        yield flows
