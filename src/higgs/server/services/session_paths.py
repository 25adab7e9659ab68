"""Which path each session takes, for ``bosonserver sessions`` (issues 11 and 12).

``punched`` once the node reported its peer on the client's public address (hole punching),
``udp_relay`` once the relay bound both legs (it records them in the lease), ``direct`` when
the node has an endpoint and the session is not relay-only, else ``ws_relay`` (the WebSocket
relay, or a UDP relay lease whose legs are not bound yet: ``udp_relay_pending``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from higgs.server.store.db import Database
from higgs.server.store.relay_leases import leases_of_sessions
from higgs.server.store.tables import Node

__all__ = ["path_of", "with_paths"]


def path_of(
    mode: str, node_endpoint: str | None, port: int | None, bound: bool, punched: bool = False
) -> str:
    if port is not None and bound and punched:
        return "punched"  # issue 12: the node's peer sits on the client's public address
    if port is not None and bound:
        return "udp_relay"
    if node_endpoint and mode != "relay":
        return "direct"
    if port is not None:
        return "udp_relay_pending"
    return "ws_relay"


async def with_paths(db: Database, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async with db.begin() as conn:
        leases = await leases_of_sessions(conn)
        endpoints = dict((await conn.execute(select(Node.id, Node.endpoint))).all())
    out = []
    for row in rows:
        lease = leases.get(row["session_id"])
        port = lease.port if lease is not None else None
        bound = lease is not None and bool(lease.client_seen and lease.node_seen)
        punched = lease is not None and bool(lease.punched_endpoint)
        path = path_of(row["mode"], endpoints.get(row["node_id"]), port, bound, punched)
        out.append(
            {
                **row,
                "path": path if row["state"] == "open" else "",
                "relay_port": port,
                "client_seen": lease.client_seen if lease else None,
                "node_seen": lease.node_seen if lease else None,
                "punched_endpoint": lease.punched_endpoint if lease else None,
            }
        )
    return out
