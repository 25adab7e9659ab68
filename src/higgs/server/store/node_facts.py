"""Loading what route selection needs to know of nodes (the node view's source).

One :class:`NodeRecord` per node: what it registered, its state and last heartbeat metrics,
and how many sessions it has open. :mod:`higgs.server.services.nodeview` turns records into
its in-memory facts; this module only reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from higgs.server.store.db import Database
from higgs.server.store.states import NodeState, SessionState
from higgs.server.store.tables import Node
from higgs.server.store.tables import Session as SessionRow

__all__ = ["NodeRecord", "load_all", "load_one", "open_count"]


@dataclass(frozen=True, slots=True)
class NodeRecord:
    node_id: str
    state: str
    public_key: str
    endpoint: str | None
    tunnel_subnet: str
    tunnel_subnet_v6: str | None
    tunnel_mtu: int
    max_clients: int
    bandwidth_mbps: float | None
    country: str | None
    region: str | None
    metrics: dict[str, Any] | None
    open_sessions: int


_COLUMNS = (
    Node.id,
    Node.state,
    Node.public_key,
    Node.endpoint,
    Node.tunnel_subnet,
    Node.tunnel_subnet_v6,
    Node.tunnel_mtu,
    Node.max_clients,
    Node.bandwidth_mbps,
    Node.country,
    Node.region,
    Node.metrics,
)


def _record(row: Any, open_sessions: int) -> NodeRecord:
    return NodeRecord(
        node_id=row.id,
        state=row.state,
        public_key=row.public_key,
        endpoint=row.endpoint,
        tunnel_subnet=row.tunnel_subnet,
        tunnel_subnet_v6=row.tunnel_subnet_v6,
        tunnel_mtu=row.tunnel_mtu,
        max_clients=row.max_clients,
        bandwidth_mbps=row.bandwidth_mbps,
        country=row.country,
        region=row.region,
        metrics=row.metrics,
        open_sessions=open_sessions,
    )


def open_count(conn: Connection, node_id: str) -> int:
    """The node's open sessions, counted in the caller's transaction (synchronous: the
    route's unit of work, :meth:`Database.run`)."""
    n = conn.scalar(
        select(func.count())
        .select_from(SessionRow)
        .where(SessionRow.node_id == node_id, SessionRow.state == SessionState.OPEN)
    )
    return int(n or 0)


def load_one(conn: Connection, node_id: str) -> NodeRecord | None:
    """One node, whatever its state (one the view does not hold: stopped, or not seen yet)."""
    row = conn.execute(select(*_COLUMNS).where(Node.id == node_id)).first()
    if row is None:
        return None
    return _record(row, open_count(conn, node_id))


async def load_all(db: Database) -> list[NodeRecord]:
    """Every node that is not stopped, with its open-session count."""
    async with db.begin() as conn:
        counts = dict(
            (
                await conn.execute(
                    select(SessionRow.node_id, func.count())
                    .where(SessionRow.state == SessionState.OPEN)
                    .group_by(SessionRow.node_id)
                )
            ).all()
        )
        rows = (await conn.execute(select(*_COLUMNS).where(Node.state != NodeState.STOPPED))).all()
    return [_record(r, int(counts.get(r.id, 0))) for r in rows]
