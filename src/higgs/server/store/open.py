"""Opening the server's database at start: migrate an empty one, refuse a stale one."""

from __future__ import annotations

import logging

from higgs.common.errors import HiggsError
from higgs.server.config import ServerSettings
from higgs.server.store import migrate
from higgs.server.store.db import DB_FILE, Database, database_url

__all__ = ["open_database"]

log = logging.getLogger(__name__)


async def open_database(settings: ServerSettings, *, auto_migrate: bool) -> Database:
    """Opens the database; migrates an empty one when ``auto_migrate``; refuses a stale one."""
    if settings.database is None:
        if auto_migrate:
            settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        elif not (settings.data_dir / DB_FILE).exists():
            raise HiggsError(
                f"no database in {settings.data_dir}: run `bosonserver migrate` "
                "(or pass --data-dir / --database)"
            )
    db = Database(database_url(settings.database, settings.data_dir))
    try:
        current = await migrate.current_revision(db)
    except Exception as exc:
        await db.dispose()
        raise HiggsError(f"cannot open the database {db.describe()}: {exc}") from exc
    head = migrate.head_revision()
    if current is None and auto_migrate:
        log.info("empty database: applying migrations", extra={"database": db.describe()})
        await migrate.upgrade(db)
    elif current != head:
        await db.dispose()
        raise HiggsError(
            f"the database schema is at {current or 'nothing'}, this server needs {head}: "
            "run `bosonserver migrate` first"
        )
    return db
