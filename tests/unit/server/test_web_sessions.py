"""The operator dashboard's logins in the database (issue 15): they outlive the process that
made them, only hashes are stored, expiry is enforced, the oldest go beyond the cap."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from higgs.server.services.web_sessions import AdminWebSessions
from higgs.server.store import migrate
from higgs.server.store.db import Database, database_url


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def _db(path: Path) -> Database:
    db = Database(database_url(None, path))
    await migrate.upgrade(db)
    return db


async def test_a_login_survives_a_restart_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    clock = Clock()
    db = await _db(tmp_path)
    try:
        sid, session = await AdminWebSessions(db, clock=clock).create()
        async with db.begin() as conn:
            stored = (await conn.execute(text("SELECT * FROM web_sessions"))).all()
        assert len(stored) == 1
        assert sid not in repr(stored)  # neither the id ...
        assert session.csrf not in repr(stored)  # ... nor the CSRF token
        assert stored[0].id_hash == hashlib.sha256(sid.encode()).hexdigest()
    finally:
        await db.dispose()
    db = await _db(tmp_path)  # a new process: a new connection, a new service
    try:
        again = await AdminWebSessions(db, clock=clock).get(sid)
        assert again is not None
        assert again.csrf == session.csrf
        assert AdminWebSessions.check_csrf(again, session.csrf)
        assert not AdminWebSessions.check_csrf(again, "x" + session.csrf[1:])
        # Another id (its last character changed; "A" itself once in 64 runs is the last).
        other = sid[:-1] + ("B" if sid.endswith("A") else "A")
        assert await AdminWebSessions(db, clock=clock).get(other) is None
    finally:
        await db.dispose()


async def test_expiry_is_enforced_and_logout_forgets(tmp_path: Path) -> None:
    clock = Clock()
    db = await _db(tmp_path)
    try:
        store = AdminWebSessions(db, ttl_s=60, clock=clock)
        sid, _ = await store.create()
        clock.now += timedelta(seconds=59)
        assert await store.get(sid) is not None
        clock.now += timedelta(seconds=1)
        assert await store.get(sid) is None
        async with db.begin() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM web_sessions"))).scalar() == 0
        other, _ = await store.create()
        await store.drop(other)
        assert await store.get(other) is None
        assert await store.get(None) is None
        assert await store.get("") is None
    finally:
        await db.dispose()


async def test_beyond_the_cap_the_oldest_login_goes(tmp_path: Path) -> None:
    clock = Clock()
    db = await _db(tmp_path)
    try:
        store = AdminWebSessions(db, max_sessions=3, clock=clock)
        sids = []
        for _ in range(4):
            sids.append((await store.create())[0])
            clock.now += timedelta(seconds=1)
        assert await store.get(sids[0]) is None
        for sid in sids[1:]:
            assert await store.get(sid) is not None
    finally:
        await db.dispose()
