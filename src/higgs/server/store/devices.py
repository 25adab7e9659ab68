"""The SQL of devices (table ``devices``; issue 18): every statement the device service runs.

A device owns one session row; what the device is now (active, node away or gone, revoked)
is read together with that session and its node, in one query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy import insert as insert_stmt
from sqlalchemy.ext.asyncio import AsyncConnection

from higgs.server.store.db import Database
from higgs.server.store.states import SessionState
from higgs.server.store.tables import Client, Device, Node, RelayLease
from higgs.server.store.tables import Session as SessionRow

__all__ = [
    "DeviceRecord",
    "by_id",
    "by_name",
    "count_live",
    "device_session_ids",
    "insert",
    "mark_revoked",
    "records",
    "sessions_of_devices",
    "set_app_endpoints",
]


def device_session_ids() -> Select[str]:
    """The sessions that belong to devices (a subquery: the sweep and a node's
    deregistration leave them open)."""
    return select(Device.session_id)


@dataclass(frozen=True)
class DeviceRecord:
    """A device with its session's and its node's state (the node may be gone: None)."""

    device: Device
    client: str
    session_state: str
    close_reason: str | None
    address: str
    node_state: str | None
    node_updated_at: datetime | None
    node_subnet: str | None
    node_endpoint: str | None = None  # the node's verified direct endpoint now
    # The session's UDP relay lease now (it moves when its relay host dies, issue 14).
    lease_address: str | None = None
    lease_port: int | None = None
    lease_client_seen: str | None = None  # the client leg the relay bound ("ip:port")
    # Where the node hears the app instead of through the relay (punched or steered), if so.
    lease_direct: str | None = None


def _records_query() -> Select[
    Device,
    str,
    str,
    str | None,
    str,
    str,
    datetime,
    str,
    str | None,
    str | None,
    int | None,
    str | None,
    str | None,
]:
    return (
        select(
            Device,
            Client.name,
            SessionRow.state,
            SessionRow.close_reason,
            SessionRow.tunnel_address,
            Node.state,
            Node.updated_at,
            Node.tunnel_subnet,
            Node.endpoint,
            RelayLease.relay_address,
            RelayLease.port,
            RelayLease.client_seen,
            RelayLease.punched_endpoint,
        )
        .join(Client, Client.id == Device.client_id)
        .join(SessionRow, SessionRow.id == Device.session_id)
        .outerjoin(Node, Node.id == Device.node_id)
        .outerjoin(RelayLease, RelayLease.session_id == Device.session_id)
        .order_by(Device.created_at)
    )


def _record(row: Any) -> DeviceRecord:
    return DeviceRecord(*tuple(row))


async def records(
    db: Database, client_id: int | None = None, *, with_revoked: bool = False
) -> list[DeviceRecord]:
    """The devices of one account (or all), oldest first; revoked ones only when asked."""
    query = _records_query()
    if client_id is not None:
        query = query.where(Device.client_id == client_id)
    if not with_revoked:
        query = query.where(Device.revoked_at.is_(None))
    async with db.transaction() as s:
        rows = (await s.execute(query)).all()
    return [_record(row) for row in rows]


async def by_name(db: Database, client_id: int, name: str) -> DeviceRecord | None:
    """The account's live (not revoked) device of this name."""
    query = _records_query().where(
        Device.client_id == client_id, Device.name == name, Device.revoked_at.is_(None)
    )
    async with db.transaction() as s:
        row = (await s.execute(query)).first()
    return None if row is None else _record(row)


async def by_id(db: Database, device_id: str) -> DeviceRecord | None:
    async with db.transaction() as s:
        row = (await s.execute(_records_query().where(Device.id == device_id))).first()
    return None if row is None else _record(row)


async def count_live(db: Database, client_id: int) -> int:
    """Devices of the account that still hold an open session (those the limit counts)."""
    query = (
        select(func.count())
        .select_from(Device)
        .join(SessionRow, SessionRow.id == Device.session_id)
        .where(
            Device.client_id == client_id,
            Device.revoked_at.is_(None),
            SessionRow.state == SessionState.OPEN,
        )
    )
    async with db.transaction() as s:
        return int(await s.scalar(query) or 0)


async def insert(conn: AsyncConnection, device: Device) -> None:
    """IntegrityError when a concurrent request took the name (``uq_devices_live_name``)."""
    columns = {c.key: getattr(device, c.key) for c in Device.__table__.columns}
    await conn.execute(insert_stmt(Device).values(**columns))


async def mark_revoked(db: Database, device_id: str, now: datetime) -> bool:
    """True when this call revoked it (it was live)."""
    async with db.begin() as conn:
        done = await conn.execute(
            update(Device)
            .where(Device.id == device_id, Device.revoked_at.is_(None))
            .values(revoked_at=now)
        )
    return bool(done.rowcount)


async def sessions_of_devices(db: Database, session_ids: Sequence[str]) -> set[str]:
    """Which of these sessions belong to devices."""
    if not session_ids:
        return set()
    async with db.transaction() as s:
        found = await s.scalars(
            select(Device.session_id).where(Device.session_id.in_(list(session_ids)))
        )
        return set(found.all())


async def set_app_endpoints(db: Database, node_id: str, reported: dict[str, str]) -> int:
    """Stores where the node sees each of its direct devices' apps (public key -> "ip:port",
    from its ``peer_stats``) while the device holds no relay lease: that is the app's address
    on the internet, the starting address of the lease it gets if the node loses its direct
    endpoint. Only changes are written; returns how many."""
    if not reported:
        return 0
    leased = select(RelayLease.session_id)
    query = (
        select(Device.id, Device.public_key, Device.app_endpoint)
        .join(SessionRow, SessionRow.id == Device.session_id)
        .where(
            Device.node_id == node_id,
            Device.path == "direct",
            Device.revoked_at.is_(None),
            SessionRow.state == SessionState.OPEN,
            Device.session_id.not_in(leased),
        )
    )
    written = 0
    async with db.begin() as conn:
        for row in (await conn.execute(query)).all():
            endpoint = reported.get(row.public_key)
            if endpoint and endpoint != row.app_endpoint:
                await conn.execute(
                    update(Device).where(Device.id == row.id).values(app_endpoint=endpoint)
                )
                written += 1
    return written
