"""The SQL of UDP relay port leases (table ``relay_leases``; docs/protocol.md §5).

A lease is held while its session is open. It is released by the session's close or expiry
(``sessions.closed_at``), with no write of its own, so every close path (the API, the sweep,
``bosonserver client revoke`` on the database) releases it; the port stays busy for the
cooldown after that, and the next lease on that relay deletes the rows past their cooldown.
Two concurrent leases of one port collide on the primary key (IntegrityError); the route
request retries as for its other unique columns.

On PostgreSQL each lease also sends ``NOTIFY higgs_relay_leases, '<relay address>'`` in its
transaction, so a relay host listening (``higgs.relay.lease_listener``) reads its sessions
the moment the lease commits, instead of at its next once-a-second read; PostgreSQL delivers
it only on commit, never for a rolled-back lease. A lost notification costs that one second.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from higgs.common.relay_ports import PortRange, pick_port
from higgs.server.store.tables import Device, Node, RelayLease
from higgs.server.store.tables import Session as SessionRow

__all__ = [
    "LEASES_CHANNEL",
    "LeaseView",
    "RelaySession",
    "lease_of",
    "lease_port",
    "leases_of_sessions",
    "notify_leased",
    "record_legs",
    "relay_sessions",
]


LEASES_CHANNEL = "higgs_relay_leases"  # payload: the relay address of the new lease


def notify_leased(conn: Connection, relay_address: str) -> None:
    """Tells the relay host ``relay_address`` of a new lease when this transaction commits
    (synchronous, as :func:`lease_port`; async callers: ``await conn.run_sync(...)``)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_notify(LEASES_CHANNEL, relay_address)))


def lease_port(
    conn: Connection,
    relay_address: str,
    ports: PortRange,
    cooldown_s: float,
    session_id: str,
    now: datetime,
) -> int | None:
    """Leases a free port of ``relay_address`` to ``session_id``; None when all are busy.
    Synchronous, as :func:`lease_of`: the route's lease runs in :meth:`Database.run`."""
    cutoff = now - timedelta(seconds=cooldown_s)
    cooled = select(SessionRow.id).where(
        SessionRow.state == "closed", SessionRow.closed_at < cutoff
    )
    conn.execute(
        delete(RelayLease).where(
            RelayLease.relay_address == relay_address, RelayLease.session_id.in_(cooled)
        )
    )
    rows = conn.execute(
        select(RelayLease.port, RelayLease.leased_at).where(
            RelayLease.relay_address == relay_address
        )
    ).all()
    latest = max(rows, key=lambda r: r.leased_at).port if rows else None
    port = pick_port(ports, {r.port for r in rows}, after=latest)
    if port is None:
        return None
    conn.execute(
        insert(RelayLease).values(
            relay_address=relay_address, port=port, session_id=session_id, leased_at=now
        )
    )
    notify_leased(conn, relay_address)
    return port


# Built once: every route asks it.
_LEASE_OF = select(RelayLease.relay_address, RelayLease.port).where(
    RelayLease.session_id == bindparam("session_id")
)


def lease_of(conn: Connection, session_id: str) -> tuple[str, int] | None:
    """The session's lease (relay address, port), if it holds one."""
    row = conn.execute(_LEASE_OF, {"session_id": session_id}).first()
    return None if row is None else (row.relay_address, row.port)


@dataclass(frozen=True)
class RelaySession:
    session_id: str
    port: int
    client_public_key: str
    node_public_key: str
    client_seen: str | None = None  # the legs the relay last bound ("ip:port")
    node_seen: str | None = None
    # A direct device's app where the node last saw it ("ip:port"): the client leg's starting
    # address (docs/protocol.md §5.2) once its node lost its direct endpoint.
    client_start: str | None = None


async def relay_sessions(conn: AsyncConnection, relay_address: str) -> list[RelaySession]:
    """The open sessions holding a port of ``relay_address``, with both public keys."""
    query = (
        select(
            SessionRow.id,
            RelayLease.port,
            SessionRow.client_public_key,
            Node.public_key,
            RelayLease.client_seen,
            RelayLease.node_seen,
            Device.app_endpoint,
        )
        .join(RelayLease, RelayLease.session_id == SessionRow.id)
        .join(Node, Node.id == SessionRow.node_id)
        .outerjoin(Device, (Device.session_id == SessionRow.id) & (Device.path == "direct"))
        .where(RelayLease.relay_address == relay_address, SessionRow.state == "open")
    )
    return [RelaySession(*row) for row in (await conn.execute(query)).all()]


@dataclass(frozen=True)
class LeaseView:
    relay_address: str
    port: int
    client_seen: str | None
    node_seen: str | None
    punched_endpoint: str | None = None


async def leases_of_sessions(conn: AsyncConnection) -> dict[str, LeaseView]:
    """session id → its lease, for listings."""
    query = select(
        RelayLease.session_id,
        RelayLease.relay_address,
        RelayLease.port,
        RelayLease.client_seen,
        RelayLease.node_seen,
        RelayLease.punched_endpoint,
    )
    rows = (await conn.execute(query)).all()
    return {r.session_id: LeaseView(*r[1:]) for r in rows}


async def record_legs(
    conn: AsyncConnection,
    relay_address: str,
    legs: dict[int, tuple[str | None, str | None]],
    now: datetime,
) -> None:
    """The relay's bound legs per port (only changed ones are written)."""
    current = {
        r.port: (r.client_seen, r.node_seen)
        for r in (
            await conn.execute(
                select(RelayLease.port, RelayLease.client_seen, RelayLease.node_seen).where(
                    RelayLease.relay_address == relay_address
                )
            )
        ).all()
    }
    for port, seen in legs.items():
        if port in current and current[port] != seen and seen[0] and seen[1]:
            await conn.execute(
                update(RelayLease)
                .where(RelayLease.relay_address == relay_address, RelayLease.port == port)
                .values(client_seen=seen[0], node_seen=seen[1], bound_at=now)
            )
