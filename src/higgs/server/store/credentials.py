"""The credential tables' reads and writes (admin tokens, enrollment keys, clients, and the
node token lookup): every statement the identity service runs.

The identity service decides who may do what and caches the answers; this module says how
the rows are read and written, inside the caller's transaction. Token lookups are the
prebuilt statements of :mod:`higgs.server.store.queries` (every request runs one).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from higgs.server.store import queries
from higgs.server.store.states import SessionState
from higgs.server.store.tables import AdminToken, Client, EnrollmentKey
from higgs.server.store.tables import Session as SessionRow

__all__ = [
    "add_admin_token",
    "add_client",
    "add_enrollment_key",
    "admin_by_token",
    "admin_tokens",
    "client_by_token",
    "client_for_update",
    "client_id",
    "clients_with_open_sessions",
    "enrollment_by_hash",
    "enrollment_for_update",
    "enrollment_keys",
    "node_by_token",
    "use_enrollment_key",
]


# --- admin tokens -----------------------------------------------------------------------------


async def admin_tokens(s: AsyncSession) -> int:
    return int(await s.scalar(select(func.count()).select_from(AdminToken)) or 0)


def add_admin_token(s: AsyncSession, token_hash: str, now: datetime) -> None:
    s.add(AdminToken(token_hash=token_hash, created_at=now))


async def admin_by_token(conn: AsyncConnection, token_hash: str) -> Any:
    return await conn.scalar(queries.ADMIN_BY_TOKEN, {"token_hash": token_hash})


# --- enrollment keys --------------------------------------------------------------------------


def add_enrollment_key(
    s: AsyncSession, key_hash: str, uses: int, expires_at: datetime | None, now: datetime
) -> None:
    s.add(EnrollmentKey(key_hash=key_hash, uses_left=uses, expires_at=expires_at, created_at=now))


async def enrollment_keys(s: AsyncSession) -> Sequence[EnrollmentKey]:
    return (await s.scalars(select(EnrollmentKey).order_by(EnrollmentKey.id))).all()


async def enrollment_for_update(s: AsyncSession, key_id: int) -> EnrollmentKey | None:
    return await s.get(EnrollmentKey, key_id, with_for_update=True)


async def enrollment_by_hash(s: AsyncSession, key_hash: str) -> EnrollmentKey | None:
    return await s.scalar(select(EnrollmentKey).where(EnrollmentKey.key_hash == key_hash))


async def use_enrollment_key(s: AsyncSession, key_hash: str, now: datetime) -> int | None:
    """Takes one use of a live key; its id, or None when it is unknown, used up or expired.

    One conditional UPDATE (``uses_left > 0`` and not expired) does the check and the
    decrement together, so two registrations racing for the last use cannot both win on
    either backend: the row lock (PostgreSQL) or the single writer (SQLite) orders them, and
    the second one's condition no longer holds."""
    used = await s.scalar(
        update(EnrollmentKey)
        .where(
            EnrollmentKey.key_hash == key_hash,
            EnrollmentKey.uses_left > 0,
            or_(EnrollmentKey.expires_at.is_(None), EnrollmentKey.expires_at > now),
        )
        .values(uses_left=EnrollmentKey.uses_left - 1)
        .returning(EnrollmentKey.id)
        .execution_options(synchronize_session=False)
    )
    return None if used is None else int(used)


# --- nodes ------------------------------------------------------------------------------------


def node_by_token(conn: Connection, token_hash: str) -> str | None:
    """Synchronous: a token lookup runs in :meth:`Database.run` (every uncached request)."""
    node_id: str | None = conn.scalar(queries.NODE_BY_TOKEN, {"token_hash": token_hash})
    return node_id


# --- clients ----------------------------------------------------------------------------------


async def client_id(s: AsyncSession, name: str) -> int | None:
    return await s.scalar(select(Client.id).where(Client.name == name))


def add_client(s: AsyncSession, name: str, token_hash: str, now: datetime) -> None:
    s.add(Client(name=name, token_hash=token_hash, created_at=now))


async def clients_with_open_sessions(s: AsyncSession) -> list[tuple[Client, int]]:
    """Every client by name, with how many sessions it has open."""
    open_count = (
        select(func.count())
        .where(SessionRow.client_id == Client.id, SessionRow.state == SessionState.OPEN)
        .scalar_subquery()
    )
    rows = (await s.execute(select(Client, open_count).order_by(Client.name))).all()
    return [(c, int(n)) for c, n in rows]


async def client_for_update(s: AsyncSession, name: str) -> Client | None:
    return await s.scalar(select(Client).where(Client.name == name).with_for_update())


def client_by_token(conn: Connection, token_hash: str) -> Any:
    """(id, name, revoked) of the client holding the token (synchronous, as node_by_token)."""
    return conn.execute(queries.CLIENT_BY_TOKEN, {"token_hash": token_hash}).first()
