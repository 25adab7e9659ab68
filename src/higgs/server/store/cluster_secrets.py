"""The SQL of what scale-out instances share beyond the data: secrets (first writer wins)
and spent registration nonces (a primary key, so a replay on any instance is refused)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from higgs.server.store.db import Database
from higgs.server.store.tables import ClusterSecret, UsedNonce

__all__ = ["REGISTRATION_KEY", "shared_secret", "spend_nonce"]

REGISTRATION_KEY = "registration_key"


async def shared_secret(db: Database, name: str, make: Callable[[], str]) -> str:
    """The deployment's secret ``name``; made by ``make`` and stored if no instance did yet.
    Two instances starting at once both try to insert: the loser reads the winner's."""
    async with db.begin() as conn:
        value: str | None = await conn.scalar(
            select(ClusterSecret.value).where(ClusterSecret.name == name)
        )
    if value is not None:
        return value
    try:
        async with db.begin() as conn:
            await conn.execute(insert(ClusterSecret).values(name=name, value=make()))
    except IntegrityError:
        pass
    async with db.begin() as conn:
        result = await conn.execute(select(ClusterSecret.value).where(ClusterSecret.name == name))
        stored: str = result.scalar_one()
    return stored


async def spend_nonce(db: Database, nonce: str, expires_at: datetime, now: datetime) -> bool:
    """True the first time ``nonce`` is spent, False for a replay (whichever instance saw the
    first one). Expired rows are dropped on the way: nonces past their TTL are refused by
    their timestamp anyway."""
    try:
        async with db.begin() as conn:
            await conn.execute(delete(UsedNonce).where(UsedNonce.expires_at < now))
            await conn.execute(insert(UsedNonce).values(nonce=nonce, expires_at=expires_at))
    except IntegrityError:
        return False
    return True
