"""What each dashboard page shows, as plain data: tables of cells, built from the services.

The same data renders the first page (Jinja2, autoescaped) and every live update (JSON over
server-sent events, written into the page with ``textContent`` by higgs.common.webui's live.js).
A cell is a string, or a dict describing a form
(``{"form": url, "label": …, "input": name, "value": …}``) that the template and the script
both build; no cell is ever HTML.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry

from higgs.protocol.api import AdminNode, AdminSession
from higgs.server.admin.relay_hosts import COLUMNS, host_rows, hosts_summary
from higgs.server.api.deps import ApiContext
from higgs.server.services.clock import utcnow
from higgs.server.services.session_paths import with_paths
from higgs.server.store import relay_hosts

__all__ = ["PAGES", "page_data"]

Cell = str | dict[str, str]
PAGES = ("nodes", "sessions", "traffic", "clients", "relay")
_MB = 1_000_000


def _age(when: datetime | None) -> str:
    if when is None:
        return "never"
    return f"{max(0, int((utcnow() - when).total_seconds()))} s ago"


def _duration(since: datetime) -> str:
    s = max(0, int((utcnow() - since).total_seconds()))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def reached(node: AdminNode) -> str:
    """How clients reach the node, from what the server knows: the port-mapping and hole
    punching results when the node reports them, else its announced endpoint and its link."""
    m: Mapping[str, Any] = node.metrics
    ways: list[str] = []
    # The heartbeat's ``port_mapping`` (PortMappingReport, docs/protocol.md §2.5).
    mapping = m.get("port_mapping")
    if isinstance(mapping, dict) and mapping.get("method") and mapping.get("external_endpoint"):
        ways.append(f"port-mapped {mapping['external_endpoint']} ({mapping['method']})")
    if m.get("hole_punched"):
        ways.append("hole-punched")
    if node.endpoint and not ways:
        ways.append(f"direct {node.endpoint}")
    if node.connected:
        ways.append("relayed (link up)")
    return " · ".join(ways) or "unreachable"


def _nodes(ctx: ApiContext, nodes: list[AdminNode]) -> dict[str, Any]:
    rows: list[list[Cell]] = []
    for n in nodes:
        left = n.metrics.get("budget_left_mb")
        total = n.metrics.get("budget_total_mb")
        budget = "unlimited" if left is None else f"{left:.0f} of {total or 0:.0f} MB"
        state = n.state + (" (paused)" if n.metrics.get("paused") is True else "")
        rows.append(
            [
                n.node_id, state, n.country or "", n.region or "",
                f"{n.open_sessions}/{n.max_clients}", budget, reached(n), n.version,
                _age(n.last_heartbeat_at),
            ]
        )  # fmt: skip
    online = sum(1 for n in nodes if n.state == "online")
    return {
        "stats": {"summary": f"{online} online of {len(nodes)} nodes"},
        "tables": {
            "nodes": {
                "columns": [
                    "node", "state", "country", "region", "load", "budget left",
                    "reached", "version", "last heartbeat",
                ],
                "rows": rows,
            }
        },
    }  # fmt: skip


def _sessions(
    ctx: ApiContext,
    sessions: list[AdminSession],
    bytes_of: Any,
    paths: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``paths``: each session's path as ``bosonserver sessions`` names it; any value is shown
    as text (new paths, e.g. hole-punched ones, need no change here)."""
    rows: list[list[Cell]] = []
    for s in sessions:
        rx, tx = bytes_of(s.session_id)
        mode: str = s.mode if s.mode != "auto" else "auto (direct or relay)"
        taken = (paths or {}).get(s.session_id)
        path = f"{taken} (asked: {mode})" if taken else mode
        if s.relay_datagrams:
            path += f", {s.relay_datagrams} relayed datagrams"
        rows.append(
            [s.session_id, s.client, s.node_id, path, _bytes(rx), _bytes(tx),
             _duration(s.created_at)]
        )  # fmt: skip
    return {
        "stats": {"summary": f"{len(sessions)} open sessions"},
        "tables": {
            "sessions": {
                "columns": [
                    "session", "client", "node", "path", "client → node", "node → client",
                    "duration",
                ],
                "rows": rows,
            }
        },
    }  # fmt: skip


def _traffic(ctx: ApiContext) -> dict[str, Any]:
    samples = ctx.traffic.samples() if ctx.traffic else []
    rows: list[list[Cell]] = [
        [
            time.strftime("%H:%M:%S", time.gmtime(s.ts)), f"{_bytes(s.rx_bps)}/s",
            f"{_bytes(s.tx_bps)}/s", str(s.open_sessions), str(s.nodes_online),
        ]
        for s in reversed(samples[-30:])
    ]  # fmt: skip
    return {
        "stats": {"summary": f"{len(samples)} samples kept"},
        "series": [[s.ts, s.rx_bps, s.tx_bps] for s in samples],
        "tables": {
            "traffic": {
                "columns": ["time (UTC)", "client → node", "node → client", "sessions", "nodes"],
                "rows": rows,
            }
        },
    }


async def _clients(ctx: ApiContext) -> dict[str, Any]:
    records = await ctx.identity.list_clients()
    month, usage = await ctx.usage.by_client() if ctx.usage else ("", {})
    rows: list[list[Cell]] = []
    for r in records:
        rx, tx, quota = usage.get(r.name, (0, 0, None))
        base = f"/admin/clients/{r.name}"
        rows.append(
            [
                r.name,
                "revoked" if r.revoked else "active",
                str(r.open_sessions),
                _bytes(rx + tx),
                {"form": base + "/quota", "label": "set", "input": "quota_mb",
                 "value": "" if quota is None else f"{quota / _MB:g}"},
                {"text": "—"} if r.revoked else {"form": base + "/revoke", "label": "revoke"},
            ]
        )  # fmt: skip
    keys: list[list[Cell]] = [
        [
            str(k.id), str(k.uses_left),
            "never" if k.expires_at is None else f"{k.expires_at:%Y-%m-%d %H:%M} UTC",
            f"{k.created_at:%Y-%m-%d %H:%M} UTC",
            {"form": f"/admin/enrollment-keys/{k.id}/revoke", "label": "revoke"}
            if k.uses_left > 0 else {"text": "—"},
        ]
        for k in await ctx.identity.list_enrollment_keys()
    ]  # fmt: skip
    return {
        "stats": {"summary": f"{len(records)} client accounts; usage month {month} (UTC)"},
        "tables": {
            "clients": {
                "columns": [
                    "client", "state", "open sessions", "used this month",
                    "monthly quota (MB, empty = unlimited)", "",
                ],
                "rows": rows,
            },
            "keys": {
                "columns": ["key", "uses left", "expires", "created", ""],
                "rows": keys,
            },
        },
    }  # fmt: skip


def relay_rows(registry: CollectorRegistry) -> list[list[Cell]]:
    """Every relay family as it would be scraped: the WebSocket relay's ``higgs_relay_*``
    today, and the UDP relay's families (any ``*udp*``) once it registers them."""
    rows: list[list[Cell]] = []
    for family in registry.collect():
        if not (family.name.startswith("higgs_relay") or "udp" in family.name):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ", ".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            rows.append([sample.name, labels, f"{sample.value:g}"])
    return rows


def udp_summary(rows: list[list[Cell]]) -> str:
    """One line of the UDP relay's health from its scraped samples (name, labels, value)."""
    value: dict[tuple[str, str], float] = {}
    drops: list[str] = []
    for name, labels, v in rows:
        value[(str(name), str(labels))] = float(str(v))
        if name == "higgs_udp_relay_dropped_total" and float(str(v)):
            drops.append(f"{str(labels).removeprefix('reason=')} {float(str(v)):g}")

    def n(name: str, labels: str = "") -> int:
        return int(value.get((f"higgs_udp_relay_{name}", labels), 0))

    return (
        f"ports leased {n('ports', 'state=leased')}, free {n('ports', 'state=free')}; "
        f"flows bound: kernel {n('flows', 'path=kernel')}, "
        f"userspace {n('flows', 'path=userspace')}; "
        f"forwarded by the kernel {n('packets_total', 'path=kernel')} packets "
        f"({_bytes(n('bytes_total', 'path=kernel'))}), "
        f"by userspace {n('packets_total', 'path=userspace')} packets "
        f"({_bytes(n('bytes_total', 'path=userspace'))}); "
        f"binds {n('binds_total')}, rebinds {n('rebinds_total')}; "
        f"dropped: {', '.join(drops) or 'none'}"
    )


async def _relay(ctx: ApiContext) -> dict[str, Any]:
    async with ctx.db.begin() as conn:
        hosts = host_rows(
            await relay_hosts.all_hosts(conn), utcnow(), ctx.settings.relay_host_dead_after_s
        )
    rows = relay_rows(ctx.metrics.registry)
    udp = [r for r in rows if "udp" in str(r[0])]
    ws = [r for r in rows if "udp" not in str(r[0])]
    return {
        "stats": {
            "summary": f"{len(ws)} WebSocket relay counters",
            "udp_summary": udp_summary(udp)
            if udp
            else "no UDP relay in this process (not configured, or it runs alone: "
            "see its own /metrics)",
            "hosts_summary": hosts_summary(hosts),
        },
        "tables": {
            "hosts": {"columns": COLUMNS, "rows": hosts},
            "relay": {"columns": ["counter", "labels", "value"], "rows": ws},
            "udp": {"columns": ["counter", "labels", "value"], "rows": udp},
        },
    }


async def page_data(ctx: ApiContext, page: str) -> dict[str, Any]:
    if page == "nodes":
        return _nodes(ctx, (await ctx.registry.list_admin()).nodes)
    if page == "sessions":
        listed = (await ctx.sessions.list_admin("open")).sessions
        usage = ctx.usage

        def bytes_of(session_id: str) -> tuple[int, int]:
            return usage.session_bytes.get(session_id, (0, 0)) if usage else (0, 0)

        rows = [s.model_dump(mode="json") for s in listed]
        paths = {r["session_id"]: str(r["path"]) for r in await with_paths(ctx.db, rows)}
        return _sessions(ctx, listed, bytes_of, paths)
    if page == "traffic":
        return _traffic(ctx)
    if page == "clients":
        return await _clients(ctx)
    if page == "relay":
        return await _relay(ctx)
    raise KeyError(page)
