"""The SQL of the relay-host registry (table ``relay_hosts``; docs/scaleout.md "Relay hosts").

Written by the relay hosts (their beat, once a second) and read by the API (route selection,
failover, the dashboard's relay page). A host is live while its ``seen_at`` is recent; the
API never deletes a row, so a host that stopped shows as down until an operator deletes its
row (no command for it yet); ``bosonserver relay`` registers again under the same address.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from higgs.server.store.tables import RelayHost, RelayLease
from higgs.server.store.tables import Session as SessionRow

__all__ = [
    "HostView",
    "MovedLease",
    "all_hosts",
    "beat",
    "drop_lease",
    "hint_legs",
    "open_leases_on",
]


@dataclass(frozen=True)
class HostView:
    address: str
    ports: str
    probe_port: int
    ws_url: str | None
    started_at: datetime
    seen_at: datetime
    stats: Mapping[str, Any]

    def live(self, now: datetime, dead_after_s: float) -> bool:
        return now - self.seen_at <= timedelta(seconds=dead_after_s)


async def beat(
    conn: AsyncConnection,
    address: str,
    *,
    ports: str,
    probe_port: int,
    ws_url: str | None,
    stats: Mapping[str, Any],
    now: datetime,
    started: bool = False,
) -> None:
    """The host's heartbeat (``started``: its first one since it started)."""
    values: dict[str, Any] = {
        "ports": ports,
        "probe_port": probe_port,
        "ws_url": ws_url,
        "seen_at": now,
        "stats": dict(stats),
    }
    if started:
        values["started_at"] = now
    done = await conn.execute(update(RelayHost).where(RelayHost.address == address).values(values))
    if done.rowcount == 0:
        await conn.execute(
            insert(RelayHost).values(address=address, **({"started_at": now} | values))
        )


def all_hosts(conn: Connection) -> list[HostView]:
    """Every registered host (synchronous: the route's lease reads it in :meth:`Database.run`;
    async callers use ``await conn.run_sync(all_hosts)``)."""
    query = select(
        RelayHost.address,
        RelayHost.ports,
        RelayHost.probe_port,
        RelayHost.ws_url,
        RelayHost.started_at,
        RelayHost.seen_at,
        RelayHost.stats,
    ).order_by(RelayHost.address)
    return [HostView(*row) for row in conn.execute(query).all()]


@dataclass(frozen=True)
class MovedLease:
    session_id: str
    node_id: str
    relay_address: str
    port: int


async def open_leases_on(conn: AsyncConnection, addresses: Collection[str]) -> list[MovedLease]:
    """The open sessions holding a port of one of ``addresses``."""
    if not addresses:
        return []
    query = (
        select(SessionRow.id, SessionRow.node_id, RelayLease.relay_address, RelayLease.port)
        .join(RelayLease, RelayLease.session_id == SessionRow.id)
        .where(RelayLease.relay_address.in_(list(addresses)), SessionRow.state == "open")
        .order_by(SessionRow.created_at)
    )
    return [MovedLease(*row) for row in (await conn.execute(query)).all()]


async def drop_lease(
    conn: AsyncConnection, session_id: str, relay_address: str
) -> tuple[str | None, str | None] | None:
    """Frees the session's port on a dead host and returns the legs it had bound (hints for
    the new host); None when another instance moved it first."""
    legs = (
        await conn.execute(
            select(RelayLease.client_seen, RelayLease.node_seen).where(
                RelayLease.session_id == session_id, RelayLease.relay_address == relay_address
            )
        )
    ).first()
    done = await conn.execute(
        delete(RelayLease).where(
            RelayLease.session_id == session_id, RelayLease.relay_address == relay_address
        )
    )
    if not done.rowcount or legs is None:
        return None
    return legs.client_seen, legs.node_seen


async def hint_legs(
    conn: AsyncConnection, session_id: str, legs: tuple[str | None, str | None]
) -> None:
    """The moved lease starts with the old host's legs as hints (docs/protocol.md §5.4): the
    new host forwards each side's first handshake to the other side's last known address."""
    await conn.execute(
        update(RelayLease)
        .where(RelayLease.session_id == session_id)
        .values(client_seen=legs[0], node_seen=legs[1])
    )
