"""A recording relay hub for the REST/service tests (the real hub is tested over WebSockets).

It implements the RelayHub seam in memory and records every call, so a test can check what the
server told the hub and what it would have sent to a node. ``connected`` says which nodes have
a link; a control message to a node without one is recorded as undelivered, as the real hub
would return False.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from higgs.server.relay.ports import RelayEvents


@dataclass
class RecordingHub:
    events: RelayEvents
    registry: CollectorRegistry
    allowed: dict[str, str] = field(default_factory=dict)
    forgotten: list[tuple[str, str]] = field(default_factory=list)
    offline: list[tuple[str, str]] = field(default_factory=list)
    sessions: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    closed: list[tuple[str, str]] = field(default_factory=list)
    sent: list[tuple[str, dict[str, Any], bool]] = field(default_factory=list)
    connected: set[str] = field(default_factory=set)
    bridged: dict[str, str | None] = field(default_factory=dict)
    ssl_context: ssl.SSLContext | None = None
    started: bool = False
    stopped: bool = False

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.started = True

    @property
    def port(self) -> int:
        return 18081  # nothing listens: the double only records

    async def stop(self) -> None:
        self.stopped = True

    def allow_node(self, node_id: str, token_hash: str) -> None:
        self.allowed[node_id] = token_hash

    def forget_node(self, node_id: str, reason: str) -> None:
        self.allowed.pop(node_id, None)
        self.connected.discard(node_id)
        self.forgotten.append((node_id, reason))

    def node_offline(self, node_id: str, reason: str) -> None:
        self.offline.append((node_id, reason))

    def open_session(self, session_id: str, channel: int, node_id: str, token_hash: str) -> None:
        self.sessions[session_id] = (channel, node_id, token_hash)

    def close_session(self, session_id: str, reason: str) -> None:
        self.sessions.pop(session_id, None)
        self.closed.append((session_id, reason))

    def bridge_session(self, session_id: str, endpoint: str | None) -> None:
        self.bridged[session_id] = endpoint

    async def send_control(self, node_id: str, message: dict[str, Any]) -> bool:
        delivered = node_id in self.connected
        self.sent.append((node_id, message, delivered))
        return delivered

    def is_node_connected(self, node_id: str) -> bool:
        return node_id in self.connected

    def session_counters(self, session_id: str) -> tuple[int, int]:
        return (0, 0)

    def messages(self, node_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [m for n, m, _ in self.sent if n == node_id and (kind is None or m["type"] == kind)]
