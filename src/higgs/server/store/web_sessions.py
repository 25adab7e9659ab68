"""The SQL of the operator dashboard's browser sessions (table ``web_sessions``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from higgs.server.store.tables import WebSessionRow

__all__ = ["add", "expiry", "remove"]


async def add(
    conn: AsyncConnection, id_hash: str, now: datetime, expires: datetime, keep: int
) -> None:
    """Stores a session; deletes expired ones, and the oldest beyond ``keep`` rows."""
    await conn.execute(delete(WebSessionRow).where(WebSessionRow.expires_at <= now))
    count = (await conn.execute(select(func.count()).select_from(WebSessionRow))).scalar_one()
    if count >= keep:
        oldest = (
            select(WebSessionRow.id_hash)
            .order_by(WebSessionRow.expires_at)
            .limit(count - keep + 1)
            .scalar_subquery()
        )
        await conn.execute(delete(WebSessionRow).where(WebSessionRow.id_hash.in_(oldest)))
    await conn.execute(
        insert(WebSessionRow).values(id_hash=id_hash, created_at=now, expires_at=expires)
    )


async def expiry(conn: AsyncConnection, id_hash: str) -> datetime | None:
    row = await conn.execute(
        select(WebSessionRow.expires_at).where(WebSessionRow.id_hash == id_hash)
    )
    return row.scalar_one_or_none()


async def remove(conn: AsyncConnection, id_hash: str) -> None:
    await conn.execute(delete(WebSessionRow).where(WebSessionRow.id_hash == id_hash))
