"""The dashboard's relay-host table (issue 14 and 15): one row per registered relay host,
from its last heartbeat's stats snapshot (table ``relay_hosts``), so a relay running alone on
another host is shown too. A host silent past ``relay_host_dead_after_s`` shows as down."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from higgs.server.store.relay_hosts import HostView

__all__ = ["COLUMNS", "host_rows", "hosts_summary"]

COLUMNS = [
    "host", "state", "ports leased", "kernel", "userspace", "drops", "probe port",
    "WebSocket URL", "last heartbeat",
]  # fmt: skip


def _count(stats: Mapping[str, Any], key: str) -> int:
    value = stats.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _drops(stats: Mapping[str, Any]) -> str:
    drops = stats.get("drops")
    if not isinstance(drops, dict):
        return "none"
    listed = [
        f"{reason} {count}"
        for reason, count in sorted(drops.items())
        if isinstance(count, int) and count
    ]
    return ", ".join(listed) or "none"


def host_rows(hosts: Sequence[HostView], now: datetime, dead_after_s: float) -> list[list[str]]:
    rows = []
    for h in hosts:
        s = h.stats
        if h.live(now, dead_after_s):
            state = "up"
        else:
            state = "down (stopped)" if s.get("stopped") is True else "down (no heartbeat)"
        age = max(0, int((now - h.seen_at).total_seconds()))
        rows.append([
            h.address,
            state,
            f"{_count(s, 'ports_leased')} of {_count(s, 'ports_total')} ({h.ports})",
            f"{_count(s, 'kernel_packets')} packets, {_count(s, 'kernel_bytes')} B",
            f"{_count(s, 'userspace_packets')} packets, {_count(s, 'userspace_bytes')} B",
            _drops(s),
            str(h.probe_port) if h.probe_port else "none",
            h.ws_url or "",
            "stopped" if s.get("stopped") is True else f"{age} s ago",
        ])  # fmt: skip
    return rows


def hosts_summary(rows: Sequence[Sequence[str]]) -> str:
    if not rows:
        return "no relay host registered"
    up = sum(1 for r in rows if r[1] == "up")
    return f"{len(rows)} relay hosts: {up} up, {len(rows) - up} down"
