"""The store's plumbing on a real SQLite file: the inline connection (no worker thread),
transactions, constraint errors, autocommit; the schema head read without
Alembic agrees with Alembic's."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

from higgs.server.store import migrate
from higgs.server.store.db import Database, database_url


def test_head_revision_matches_alembic() -> None:
    script = ScriptDirectory.from_config(migrate._config())
    assert migrate.head_revision() == script.get_current_head()


async def test_sqlite_runs_on_the_loop_thread_with_wal(tmp_path: Path) -> None:
    db = Database(database_url(None, tmp_path))
    threads_before = threading.active_count()
    try:
        assert await migrate.current_revision(db) is None
        assert await migrate.upgrade(db) == migrate.head_revision()
        async with db.begin() as conn:
            mode = await conn.scalar(text("PRAGMA journal_mode"))
            sync = await conn.scalar(text("PRAGMA synchronous"))
        assert (mode, sync) == ("wal", 1)  # 1 = NORMAL
        # aiosqlite would have started a worker thread per connection.
        assert threading.active_count() == threads_before

        async with db.begin() as conn:
            await conn.execute(text("CREATE TABLE t (k TEXT PRIMARY KEY)"))
            await conn.execute(text("INSERT INTO t VALUES ('a')"))
        async with db.begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES ('b')"))
            with pytest.raises(IntegrityError):
                await conn.execute(text("INSERT INTO t VALUES ('a')"))
            await conn.rollback()
        async with db.autocommit() as conn:
            await conn.execute(text("INSERT INTO t VALUES ('c')"))
        async with db.begin() as conn:
            keys = (await conn.scalars(text("SELECT k FROM t ORDER BY k"))).all()
        assert keys == ["a", "c"]  # 'b' rolled back with its transaction
        assert await db.ping()
    finally:
        await db.dispose()
    assert (tmp_path / "bosonserver.db").exists()


async def test_run_commits_a_unit_and_rolls_it_back_on_error(tmp_path: Path) -> None:
    """Database.run: the hot paths' synchronous units (one greenlet, one transaction)."""
    db = Database(database_url(None, tmp_path))
    try:
        async with db.begin() as conn:
            await conn.execute(text("CREATE TABLE t (k TEXT PRIMARY KEY)"))

        def insert(conn: Connection, *keys: str) -> int:
            for k in keys:
                conn.execute(text("INSERT INTO t VALUES (:k)"), {"k": k})
            return len(keys)

        assert await db.run(lambda c: insert(c, "a", "b")) == 2
        # The second insert collides: the whole unit, 'c' included, is rolled back.
        with pytest.raises(IntegrityError):
            await db.run(lambda c: insert(c, "c", "a"))
        assert await db.run(lambda c: insert(c, "d"), autocommit=True) == 1
        keys = await db.run(lambda c: list(c.scalars(text("SELECT k FROM t ORDER BY k"))))
        assert keys == ["a", "b", "d"]
    finally:
        await db.dispose()
