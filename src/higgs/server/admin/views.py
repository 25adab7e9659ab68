"""What each dashboard page shows, as plain data: tables of cells, built from the services.

The same data renders the first page (Jinja2, autoescaped) and every live update (JSON over
server-sent events, written into the page with ``textContent`` by higgs.common.webui's live.js).
A cell is a string, or a dict describing a form
(``{"form": url, "label": …, "input": name, "value": …}``) that the template and the script
both build; no cell is ever HTML.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
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


# The paths (session_paths.path_of) on which a client reaches the node through the relay.
_RELAYED = frozenset({"udp_relay", "udp_relay_pending", "ws_relay"})


def _count(n: int) -> str:
    return f"{n} session{'s' if n != 1 else ''}"


def reached(node: AdminNode, paths: Sequence[str] = ()) -> str:
    """How clients reach the node, from what the server knows: the port-mapping result the
    node reports, else its announced endpoint; then its open sessions' paths (``paths``, as
    ``bosonserver sessions`` names them: a ``punched`` one -- hole-punched or steered onto the
    client's public address -- is the only evidence of hole punching), and its relay link."""
    m: Mapping[str, Any] = node.metrics
    ways: list[str] = []
    # The heartbeat's ``port_mapping`` (PortMappingReport, docs/protocol.md §2.5).
    mapping = m.get("port_mapping")
    if isinstance(mapping, dict) and mapping.get("method") and mapping.get("external_endpoint"):
        ways.append(f"port-mapped {mapping['external_endpoint']} ({mapping['method']})")
    elif node.endpoint:
        ways.append(f"direct {node.endpoint}")
    punched = sum(1 for p in paths if p == "punched")
    if punched:
        ways.append(f"hole-punched ({_count(punched)})")
    relayed = sum(1 for p in paths if p in _RELAYED)
    link = ["link up"] if node.connected else []
    if relayed or link:
        ways.append(f"relayed ({', '.join(([_count(relayed)] if relayed else []) + link)})")
    return " · ".join(ways) or "unreachable"


def _nodes(
    ctx: ApiContext, nodes: list[AdminNode], paths: Mapping[str, Sequence[str]] | None = None
) -> dict[str, Any]:
    """``paths``: node id -> the paths of its open sessions (see :func:`reached`)."""
    rows: list[list[Cell]] = []
    for n in nodes:
        left = n.metrics.get("budget_left_mb")
        total = n.metrics.get("budget_total_mb")
        budget = "unlimited" if left is None else f"{left:.0f} of {total or 0:.0f} MB"
        state = n.state + (" (paused)" if n.metrics.get("paused") is True else "")
        rows.append(
            [
                n.node_id, state, n.country or "", n.region or "",
                f"{n.open_sessions}/{n.max_clients}", budget,
                reached(n, (paths or {}).get(n.node_id, ())), n.version,
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
            await conn.run_sync(relay_hosts.all_hosts),
            utcnow(),
            ctx.settings.relay_host_dead_after_s,
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


async def _open_sessions(ctx: ApiContext) -> tuple[list[AdminSession], dict[str, str]]:
    """The open sessions, and each one's path as ``bosonserver sessions`` names it."""
    listed = (await ctx.sessions.list_admin("open")).sessions
    rows = await with_paths(ctx.db, [s.model_dump(mode="json") for s in listed])
    return listed, {str(r["session_id"]): str(r["path"]) for r in rows}


async def page_data(ctx: ApiContext, page: str) -> dict[str, Any]:
    if page == "nodes":
        nodes = (await ctx.registry.list_admin()).nodes
        listed, paths = await _open_sessions(ctx)
        by_node: dict[str, list[str]] = {}
        for s in listed:
            by_node.setdefault(s.node_id, []).append(paths.get(s.session_id, ""))
        return _nodes(ctx, nodes, by_node)
    if page == "sessions":
        listed, paths = await _open_sessions(ctx)
        usage = ctx.usage

        def bytes_of(session_id: str) -> tuple[int, int]:
            return usage.session_bytes.get(session_id, (0, 0)) if usage else (0, 0)

        return _sessions(ctx, listed, bytes_of, paths)
    if page == "traffic":
        return _traffic(ctx)
    if page == "clients":
        return await _clients(ctx)
    if page == "relay":
        return await _relay(ctx)
    raise KeyError(page)
