"""The node table's reads and writes: every statement the registry runs.

The registry decides *what* happens to a node (registered, heartbeat, offline, stopped); this
module says how it is read and written, inside the caller's transaction. The heartbeat's
statements are the prebuilt ones of :mod:`higgs.server.store.queries` (the hot path).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from higgs.server.store import queries
from higgs.server.store.states import NodeState, SessionState
from higgs.server.store.tables import Node
from higgs.server.store.tables import Session as SessionRow

__all__ = [
    "by_public_key",
    "by_registration",
    "by_token_hash",
    "for_update",
    "heartbeat",
    "live_tokens",
    "mark_offline",
    "online",
    "open_counts",
    "open_sessions",
    "open_total",
    "stale_online",
    "state_counts",
    "state_of",
]


async def by_public_key(s: AsyncSession, public_key: str) -> Node | None:
    return await s.scalar(select(Node).where(Node.public_key == public_key))


async def by_token_hash(s: AsyncSession, token_hash: str) -> Node | None:
    return await s.scalar(select(Node).where(Node.token_hash == token_hash))


async def for_update(s: AsyncSession, node_id: str) -> Node | None:
    return await s.get(Node, node_id, with_for_update=True)


async def open_sessions(s: AsyncSession, node_id: str) -> int:
    n = await s.scalar(
        select(func.count())
        .select_from(SessionRow)
        .where(SessionRow.node_id == node_id, SessionRow.state == SessionState.OPEN)
    )
    return int(n or 0)


def heartbeat(
    conn: Connection,
    node_id: str,
    now: datetime,
    metrics: dict[str, Any],
    tunnel_mtu: int | None,
    token_hash: str | None = None,
) -> Any:
    """One UPDATE of a node that is not stopped (and, with ``token_hash``, whose token that
    is); its row (``updated_at``), None when none. Synchronous: the heartbeat's unit of work
    runs in :meth:`Database.run`."""
    params = {"node_id": node_id, "now": now, "node_metrics": metrics, "tunnel_mtu": tunnel_mtu}
    if token_hash is None:
        return conn.execute(queries.HEARTBEAT, params).first()
    return conn.execute(
        queries.HEARTBEAT_AS_OWNER, {**params, "owner_token_hash": token_hash}
    ).first()


def state_of(conn: Connection, node_id: str) -> str | None:
    state: str | None = conn.scalar(queries.NODE_STATE, {"node_id": node_id})
    return state


async def stale_online(conn: AsyncConnection, cutoff: datetime) -> list[str]:
    """Online nodes whose last heartbeat is older than ``cutoff``."""
    stale = Node.state == NodeState.ONLINE, Node.last_heartbeat_at < cutoff
    return list((await conn.scalars(select(Node.id).where(*stale))).all())


async def mark_offline(
    conn: AsyncConnection, ids: Sequence[str], cutoff: datetime, now: datetime
) -> list[str]:
    """Marks ``ids`` offline if they are still stale (a heartbeat that landed meanwhile keeps
    its node online); returns those that went."""
    stale = Node.state == NodeState.ONLINE, Node.last_heartbeat_at < cutoff
    went = await conn.scalars(
        update(Node)
        .where(Node.id.in_(ids), *stale)
        .values(state=NodeState.OFFLINE, updated_at=now)
        .returning(Node.id)
    )
    return list(went.all())


async def live_tokens(s: AsyncSession) -> list[tuple[str, str]]:
    """(id, token hash) of every node that is not stopped."""
    rows = await s.execute(select(Node.id, Node.token_hash).where(Node.state != NodeState.STOPPED))
    return [(node_id, token_hash) for node_id, token_hash in rows.all()]


async def online(s: AsyncSession) -> Sequence[Node]:
    return (
        await s.scalars(select(Node).where(Node.state == NodeState.ONLINE).order_by(Node.id))
    ).all()


async def by_registration(s: AsyncSession) -> Sequence[Node]:
    """Every node, oldest registration first."""
    return (await s.scalars(select(Node).order_by(Node.registered_at))).all()


async def state_counts(s: AsyncSession) -> dict[str, int]:
    rows = (await s.execute(select(Node.state, func.count()).group_by(Node.state))).all()
    return {state: int(n) for state, n in rows}


async def open_total(s: AsyncSession) -> int:
    n = await s.scalar(
        select(func.count()).select_from(SessionRow).where(SessionRow.state == SessionState.OPEN)
    )
    return int(n or 0)


async def open_counts(s: AsyncSession) -> dict[str, int]:
    """Open sessions by node."""
    rows = (
        await s.execute(
            select(SessionRow.node_id, func.count())
            .where(SessionRow.state == SessionState.OPEN)
            .group_by(SessionRow.node_id)
        )
    ).all()
    return {node_id: int(n) for node_id, n in rows}
