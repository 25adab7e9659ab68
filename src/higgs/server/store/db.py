"""Opening the database: URL normalisation, engine, session factory, readiness probe."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import greenlet_spawn

from higgs.common.errors import ConfigError
from higgs.server.store.sqlite_inline import inline_creator

__all__ = ["DB_FILE", "Database", "database_url"]

T = TypeVar("T")

DB_FILE = "bosonserver.db"


def database_url(database: str | None, data_dir: Path) -> str:
    """The async SQLAlchemy URL: the SQLite file in ``data_dir`` unless ``database`` is given."""
    if not database:
        return f"sqlite+aiosqlite:///{data_dir / DB_FILE}"
    try:
        url = make_url(database)
    except ArgumentError as exc:
        raise ConfigError(f"--database {database!r} is not a database URL") from exc
    backend = url.get_backend_name()
    if backend == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    elif backend in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+asyncpg")
    else:
        raise ConfigError(
            f"--database: unsupported backend {backend!r} (use postgresql://… or sqlite:///…)"
        )
    return url.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    # WAL: readers (the CLI, another process) never block the writer. NORMAL is durable
    # across an application crash in WAL mode (a power cut may lose the last commits).
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    # Another process (the operator CLI) may hold the write lock for a moment.
    cur.execute("PRAGMA busy_timeout=5000")
    # Checkpoints stay SQLite's own (every 1,000 WAL pages, inside a commit). Checkpointing
    # from a worker thread's connection instead was measured worse: the server's writes then
    # waited in the busy handler on the event loop while the checkpointer held its locks.
    cur.close()


# SQLite has one writer at a time. Several pooled connections would queue on the file lock
# (or fail with SQLITE_BUSY when a read transaction tries to upgrade), so the server uses
# exactly one connection, run on the event loop thread (see sqlite_inline.py), and
# transactions queue in the pool instead; each one is short. PostgreSQL: enough connections
# for the API's concurrent requests (heartbeats, routes) without one per request; the test
# cluster allows 200.
_SQLITE_POOL: dict[str, Any] = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 60}
# No pre-ping: it costs a round trip on every checkout; a connection broken by a database
# restart fails one request and is then discarded with the pool (SQLAlchemy invalidates the
# pool on a disconnect error), and recycling bounds a connection's age.
_POSTGRES_POOL: dict[str, Any] = {
    "pool_size": 16,
    "max_overflow": 16,
    "pool_timeout": 30,
    "pool_recycle": 1800,
}


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs = dict(_SQLITE_POOL if self.is_sqlite else _POSTGRES_POOL)
        if self.is_sqlite:
            path = make_url(url).database
            if path and path != ":memory:":
                kwargs["async_creator"] = inline_creator(path)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: commits on success, rolls back on error."""
        async with self.sessionmaker() as session, session.begin():
            yield session

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """One unit of work on a Core connection (hot paths: no ORM identity map or flush)."""
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection where each statement commits on its own: for a unit of work that is
        one statement (a heartbeat), this saves the BEGIN and COMMIT round trips to
        PostgreSQL. SQLite has no round trips to save: a plain transaction there."""
        if self.is_sqlite:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    async def run(self, work: Callable[[Connection], T], *, autocommit: bool = False) -> T:
        """One unit of work as plain synchronous Core code on one connection, in one
        transaction (committed when ``work`` returns, rolled back when it raises).

        Why: every await on an :class:`AsyncConnection` (connect, begin, each execute,
        commit, close) is a greenlet switch wrapped in a coroutine of its own; the hot paths
        (a heartbeat, a token lookup, a route, a close) run their statements here in one
        greenlet instead, what SQLAlchemy's own ``run_sync`` does without the async
        connection around it. Measured: a one-statement transaction ~0.7 ms of CPU through
        :meth:`begin`, ~0.35 ms here (SQLite, this machine). ``work`` must not await (it
        cannot): on PostgreSQL each statement still yields to the event loop while it waits
        for the server, as it does through :meth:`begin`.

        ``autocommit``: on PostgreSQL each statement commits on its own (see
        :meth:`autocommit`); a plain transaction on SQLite."""
        return await greenlet_spawn(self._run_sync, work, autocommit)

    def _run_sync(self, work: Callable[[Connection], T], autocommit: bool) -> T:
        engine = self.engine.sync_engine
        if autocommit and not self.is_sqlite:
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                return work(conn)
        with engine.begin() as conn:
            return work(conn)

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:  # readiness only reports reachability
            return False
        return True

    def describe(self) -> str:
        """The URL without password, for logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    async def dispose(self) -> None:
        await self.engine.dispose()
