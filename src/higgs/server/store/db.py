"""Opening the database: URL normalisation, engine, session factory, readiness probe."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from higgs.common.errors import ConfigError

__all__ = ["DB_FILE", "Database", "database_url"]

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
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if not self.is_sqlite:
            kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: commits on success, rolls back on error."""
        async with self.sessionmaker() as session, session.begin():
            yield session

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
