"""The operator dashboard's browser sessions, in the database so a restart logs no one out.

The cookie carries a random id (256 bits); the database keeps only its SHA-256 and the expiry,
which is enforced on every request (an expired row is deleted when it is next presented, and
by the next login). The CSRF token is derived from the id (a hash under its own label), so it
needs no storage, changes with every login and reveals neither the id nor the stored hash.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from higgs.common.websession import WebSession, check_csrf, derive_csrf, session_id_hash
from higgs.server.store import web_sessions as store
from higgs.server.store.db import Database

__all__ = ["AdminWebSessions"]


def _csrf(sid: str) -> str:
    return derive_csrf(sid, b"higgs admin csrf")


class AdminWebSessions:
    def __init__(
        self,
        db: Database,
        *,
        ttl_s: float = 8 * 3600,
        max_sessions: int = 1000,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db, self.ttl_s, self.max_sessions, self._clock = db, ttl_s, max_sessions, clock

    async def create(self) -> tuple[str, WebSession]:
        sid = secrets.token_urlsafe(32)
        now = self._clock()
        expires = now + timedelta(seconds=self.ttl_s)
        async with self.db.begin() as conn:
            await store.add(conn, session_id_hash(sid), now, expires, self.max_sessions)
        return sid, WebSession(_csrf(sid), expires.timestamp())

    async def get(self, sid: str | None) -> WebSession | None:
        if not sid or len(sid) > 100:
            return None
        id_hash = session_id_hash(sid)
        async with self.db.begin() as conn:
            expires = await store.expiry(conn, id_hash)
            if expires is None:
                return None
            if expires <= self._clock():
                await store.remove(conn, id_hash)
                return None
        return WebSession(_csrf(sid), expires.timestamp())

    async def drop(self, sid: str | None) -> None:
        if sid:
            async with self.db.begin() as conn:
                await store.remove(conn, session_id_hash(sid))

    check_csrf = staticmethod(check_csrf)
