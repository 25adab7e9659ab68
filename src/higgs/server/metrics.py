"""The server's Prometheus metrics, on a registry of its own (the hub adds relay metrics to it).

A registry per server instance, not the global default, so that several servers can run in one
test process and so that ``/metrics`` shows exactly this server.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServerMetrics"]


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.nodes = Gauge("higgs_nodes", "Registered nodes by state", ["state"], registry=r)
        self.sessions_open = Gauge("higgs_sessions_open", "Open sessions", registry=r)
        self.sessions_opened = Counter(
            "higgs_sessions_opened", "Sessions opened since start", registry=r
        )
        self.sessions_closed = Counter(
            "higgs_sessions_closed",
            "Sessions closed since start, by reason",
            ["reason"],
            registry=r,
        )
        for reason in (
            "client_closed", "client_revoked", "expired", "node_stopped", "replaced",
            "quota_exceeded",
        ):  # fmt: skip
            self.sessions_closed.labels(reason=reason)
        self.route_retries = Counter(
            "higgs_route_retries",
            "Route requests that chose again (conflict: a concurrent request took the address, "
            "channel or key; stale_view: the chosen node was full in the database)",
            ["reason"],
            registry=r,
        )
        self.registrations = Counter(
            "higgs_node_registrations", "Node registrations, by outcome", ["outcome"], registry=r
        )
        self.nodes_went_offline = Counter(
            "higgs_nodes_went_offline", "Nodes marked offline after missed heartbeats", registry=r
        )
        self.api_latency = Histogram(
            "higgs_api_request_seconds",
            "REST API latency by route template, method and status",
            ["route", "method", "status"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        # issue 15: usage accounting (services/usage.py)
        self.usage_bytes = Counter(
            "higgs_usage_bytes",
            "Client bytes the nodes reported, by direction (from_clients, to_clients)",
            ["direction"],
            registry=r,
        )
        self.usage_bytes.labels(direction="from_clients")
        self.usage_bytes.labels(direction="to_clients")
        self.quota_closes = Counter(
            "higgs_quota_closes", "Clients whose sessions closed at the monthly quota", registry=r
        )
        self.rate_limited = Counter(
            "higgs_api_rate_limited",
            "Requests refused with 429, by bucket kind",
            ["kind"],
            registry=r,
        )
        for kind in ("address", "credential", "admin_login"):  # series exist before the first 429
            self.rate_limited.labels(kind=kind)
        # issue 17: what authenticated nodes send on their control link that the server drops
        self.node_messages_dropped = Counter(
            "higgs_node_messages_dropped",
            "Control messages from authenticated nodes dropped, by reason (malformed: not a "
            "valid control message; unexpected: valid, but not one the server acts on)",
            ["reason"],
            registry=r,
        )
        for reason in ("malformed", "unexpected"):
            self.node_messages_dropped.labels(reason=reason)
