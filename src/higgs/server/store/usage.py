"""SQL for per-client monthly usage and quotas (services/usage.py is the only caller).

The add is one upsert per (client, month): ``INSERT … ON CONFLICT DO UPDATE SET rx = rx + …``,
so concurrent heartbeats of two nodes serving one client never lose an increment. Both SQLite
and PostgreSQL spell it the same through their SQLAlchemy dialects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from higgs.server.store.queries import open_session_condition
from higgs.server.store.tables import Client, ClientUsage
from higgs.server.store.tables import Session as SessionRow

__all__ = [
    "ClientQuota",
    "add_usage",
    "open_peers",
    "quota_of",
    "quota_states",
    "set_quota",
    "usage_by_client",
]

_usage: Table = ClientUsage.__table__  # type: ignore[assignment]
_clients: Table = Client.__table__  # type: ignore[assignment]
_sessions: Table = SessionRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class OpenPeer:
    session_id: str
    client_id: int
    public_key: str
    created_at_ts: float


@dataclass(frozen=True)
class ClientQuota:
    client_id: int
    name: str
    quota_bytes: int | None
    used_bytes: int

    @property
    def exhausted(self) -> bool:
        return self.quota_bytes is not None and self.used_bytes >= self.quota_bytes


async def open_peers(conn: AsyncConnection, node_id: str) -> dict[str, OpenPeer]:
    """The node's open sessions by client public key."""
    rows = await conn.execute(
        select(
            _sessions.c.id, _sessions.c.client_id, _sessions.c.client_public_key,
            _sessions.c.created_at,
        ).where(_sessions.c.node_id == node_id, open_session_condition())
    )  # fmt: skip
    return {
        r.client_public_key: OpenPeer(
            r.id, r.client_id, r.client_public_key, r.created_at.timestamp()
        )
        for r in rows
    }


async def add_usage(
    conn: AsyncConnection, month: str, deltas: Mapping[int, tuple[int, int]]
) -> None:
    """Adds (rx, tx) bytes to each client's row of ``month``."""
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    for client_id, (rx, tx) in deltas.items():
        stmt = dialect.insert(_usage).values(
            client_id=client_id, month=month, rx_bytes=rx, tx_bytes=tx
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[_usage.c.client_id, _usage.c.month],
            set_={
                "rx_bytes": _usage.c.rx_bytes + stmt.excluded.rx_bytes,
                "tx_bytes": _usage.c.tx_bytes + stmt.excluded.tx_bytes,
            },
        )
        await conn.execute(stmt)


async def quota_states(
    conn: AsyncConnection, month: str, client_ids: Iterable[int] | None = None
) -> list[ClientQuota]:
    """Quota and bytes used in ``month`` (both ways), for the given clients or all."""
    used = (_usage.c.rx_bytes + _usage.c.tx_bytes).label("used")
    stmt = select(_clients.c.id, _clients.c.name, _clients.c.quota_bytes, used).select_from(
        _clients.outerjoin(
            _usage, (_usage.c.client_id == _clients.c.id) & (_usage.c.month == month)
        )
    )
    if client_ids is not None:
        stmt = stmt.where(_clients.c.id.in_(list(client_ids)))
    rows = await conn.execute(stmt)
    return [ClientQuota(r.id, r.name, r.quota_bytes, int(r.used or 0)) for r in rows]


async def usage_by_client(
    conn: AsyncConnection, month: str
) -> dict[str, tuple[int, int, int | None]]:
    """Client name -> (rx, tx, quota) for ``month``."""
    stmt = select(
        _clients.c.name, _clients.c.quota_bytes, _usage.c.rx_bytes, _usage.c.tx_bytes
    ).select_from(
        _clients.outerjoin(
            _usage, (_usage.c.client_id == _clients.c.id) & (_usage.c.month == month)
        )
    )
    return {
        r.name: (int(r.rx_bytes or 0), int(r.tx_bytes or 0), r.quota_bytes)
        for r in await conn.execute(stmt)
    }


async def set_quota(conn: AsyncConnection, name: str, quota_bytes: int | None) -> int | None:
    """Sets the client's quota; returns its id, or None when there is no such client."""
    row = (
        await conn.execute(
            update(_clients)
            .where(_clients.c.name == name)
            .values(quota_bytes=quota_bytes)
            .returning(_clients.c.id)
        )
    ).first()
    return int(row.id) if row is not None else None


_USED = (_usage.c.rx_bytes + _usage.c.tx_bytes).label("used")
# Parameters: month, client_id. Built once: every route request checks its client's quota.
_QUOTA_OF = (
    select(_clients.c.id, _clients.c.name, _clients.c.quota_bytes, _USED)
    .select_from(
        _clients.outerjoin(
            _usage,
            (_usage.c.client_id == _clients.c.id) & (_usage.c.month == bindparam("month")),
        )
    )
    .where(_clients.c.id == bindparam("client_id"))
)


def quota_of(conn: Connection, month: str, client_id: int) -> ClientQuota | None:
    """:func:`quota_states` of one client (synchronous: run in :meth:`Database.run`)."""
    r = conn.execute(_QUOTA_OF, {"month": month, "client_id": client_id}).first()
    return None if r is None else ClientQuota(r.id, r.name, r.quota_bytes, int(r.used or 0))
