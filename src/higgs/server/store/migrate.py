"""Applying Alembic migrations on the server's async engine (no alembic.ini, no shell)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from higgs.server.store.db import Database

__all__ = ["current_revision", "head_revision", "upgrade"]

SCRIPT_LOCATION = "higgs.server.store:migrations"


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:
        raise RuntimeError("no migrations are packaged")
    return head


async def current_revision(db: Database) -> str | None:
    """The schema revision of the database; None for an empty database."""

    def _read(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with db.engine.connect() as conn:
        return await conn.run_sync(_read)


async def upgrade(db: Database, revision: str = "head") -> str:
    """Upgrades the schema to ``revision``; returns the resulting revision."""

    def _upgrade(conn: Connection) -> None:
        command.upgrade(_config(conn), revision)

    async with db.engine.begin() as conn:
        await conn.run_sync(_upgrade)
    result = await current_revision(db)
    return result or ""
