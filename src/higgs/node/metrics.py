"""What the node reports in heartbeats: host load, WireGuard peer counters, bandwidth budget.

Peer counters come from the WireGuard interface (``wg show <if> dump`` through osnet); this
module only does arithmetic on them, so it is tested without an interface. The monthly volume
budget survives restarts: WireGuard's counters start from zero with every new peer or
interface, so usage is accumulated from per-peer deltas into a small state file.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil  # type: ignore[import-untyped]

from higgs.protocol.api import HeartbeatRequest

__all__ = ["Budget", "NodeMetrics", "PeerCounters", "collect", "heartbeat_body", "peer_stats"]

log = logging.getLogger(__name__)

_MB = 1_000_000


class PeerCounters(Protocol):
    """One WireGuard peer as the interface reports it (osnet's dump rows satisfy this)."""

    @property
    def public_key(self) -> str: ...
    @property
    def rx_bytes(self) -> int: ...
    @property
    def tx_bytes(self) -> int: ...
    @property
    def latest_handshake(self) -> float | None:
        """Unix time of the last handshake; None (or 0) means never."""
        ...


@dataclass(frozen=True)
class NodeMetrics:
    cpu_percent: float
    memory_percent: float
    peers: int
    rx_bytes: int
    tx_bytes: int
    handshake_ages: dict[str, float | None]  # public key -> seconds since handshake, None = never
    budget_left_mb: float | None  # None: no cap
    budget_total_mb: float | None


@dataclass
class Budget:
    """The monthly volume cap: bytes used this calendar month (UTC), persisted in ``path``."""

    path: Path
    cap_bytes: int  # 0 = unlimited
    month: str = ""
    used_bytes: int = 0
    _last: dict[str, int] = field(default_factory=dict)
    # update() runs on the event loop, settle() in the worker thread that removes peers.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def load(cls, path: Path, cap_gb: float) -> Budget:
        budget = cls(path=path, cap_bytes=int(cap_gb * 1_000_000_000))
        try:
            data = json.loads(path.read_text())
            budget.month = str(data["month"])
            budget.used_bytes = int(data["used_bytes"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # missing or damaged: start counting from zero
        budget._roll()
        return budget

    def _roll(self) -> None:
        month = time.strftime("%Y-%m", time.gmtime())
        if month != self.month:
            self.month, self.used_bytes = month, 0

    def _delta(self, peer: PeerCounters) -> tuple[int, int]:
        """(bytes moved since last counted, the peer's total now)."""
        total = peer.rx_bytes + peer.tx_bytes
        before = self._last.get(peer.public_key)
        if before is None:
            return total, total  # a peer we have not seen: everything it moved is new
        if total >= before:
            return total - before, total
        return total, total  # the counter went down: a new peer under the same key

    def update(self, peers: Sequence[PeerCounters]) -> None:
        """Adds what each peer moved since the last call (a counter that went down restarted)."""
        with self._lock:
            self._roll()
            seen: dict[str, int] = {}
            for peer in peers:
                delta, seen[peer.public_key] = self._delta(peer)
                self.used_bytes += delta
            self._last = seen
            self._save()

    def settle(self, peers: Sequence[PeerCounters]) -> None:
        """The final counters of peers about to be removed: what they moved since the last
        :meth:`update` would otherwise be lost with them. Their baseline stays until the next
        update no longer sees them, so counters read before the removal add nothing twice."""
        with self._lock:
            self._roll()
            for peer in peers:
                delta, self._last[peer.public_key] = self._delta(peer)
                self.used_bytes += delta
            self._save()

    def _save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"month": self.month, "used_bytes": self.used_bytes}))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot save the budget file", extra={"path": str(self.path), "err": exc})

    @property
    def exhausted(self) -> bool:
        return self.cap_bytes > 0 and self.used_bytes >= self.cap_bytes

    @property
    def left_mb(self) -> float | None:
        if self.cap_bytes <= 0:
            return None
        return max(0, self.cap_bytes - self.used_bytes) / _MB

    @property
    def total_mb(self) -> float | None:
        return self.cap_bytes / _MB if self.cap_bytes > 0 else None


def collect(
    peers: Sequence[PeerCounters], budget: Budget | None = None, now: float | None = None
) -> NodeMetrics:
    now = time.time() if now is None else now
    ages: dict[str, float | None] = {
        p.public_key: (max(0.0, now - p.latest_handshake) if p.latest_handshake else None)
        for p in peers
    }
    if budget is not None:
        budget.update(peers)
    return NodeMetrics(
        # interval=None: the CPU share since the previous call, without blocking the loop.
        cpu_percent=float(psutil.cpu_percent(interval=None)),
        memory_percent=float(psutil.virtual_memory().percent),
        peers=len(peers),
        rx_bytes=sum(p.rx_bytes for p in peers),
        tx_bytes=sum(p.tx_bytes for p in peers),
        handshake_ages=ages,
        budget_left_mb=budget.left_mb if budget else None,
        budget_total_mb=budget.total_mb if budget else None,
    )


def peer_stats(peers: Sequence[PeerCounters], now: float | None = None) -> list[dict[str, Any]]:
    """The ``peers`` list of a ``peer_stats`` control message / heartbeat (protocol §3.3)."""
    now = time.time() if now is None else now
    return [
        {
            "public_key": p.public_key,
            "rx_bytes": p.rx_bytes,
            "tx_bytes": p.tx_bytes,
            "last_handshake_s": max(0.0, now - p.latest_handshake) if p.latest_handshake else None,
        }
        for p in peers
    ]


def peer_stats_with_endpoints(
    peers: Sequence[PeerCounters], now: float | None = None
) -> list[dict[str, Any]]:
    """``peer_stats`` for the control link: with each peer's endpoint (issue 12), which the
    REST heartbeat's strict body does not take."""
    out = peer_stats(peers, now)
    for row, peer in zip(out, peers, strict=True):
        endpoint = getattr(peer, "endpoint", None)
        if endpoint:
            row["endpoint"] = endpoint
    return out


def heartbeat_body(metrics: NodeMetrics, peers: Sequence[PeerCounters]) -> dict[str, Any]:
    """The JSON body of ``POST /v1/nodes/{id}/heartbeat`` (validated against the API model)."""
    request = HeartbeatRequest.model_validate(
        {
            "cpu_percent": min(100.0, metrics.cpu_percent),
            "memory_percent": min(100.0, metrics.memory_percent),
            "peers": metrics.peers,
            "rx_bytes": metrics.rx_bytes,
            "tx_bytes": metrics.tx_bytes,
            "budget_left_mb": metrics.budget_left_mb,
            "budget_total_mb": metrics.budget_total_mb,
            "peer_stats": peer_stats(peers),
        }
    )
    return request.model_dump(mode="json", exclude_none=True)
