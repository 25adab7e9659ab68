"""Alembic environment: runs on a connection handed over by :mod:`higgs.server.store.migrate`.

The server never runs Alembic from a shell with an ini file; ``bosonserver migrate`` and
``serve`` open the async engine themselves and pass a sync-facade connection in
``config.attributes["connection"]`` (Alembic's documented connection-sharing recipe).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from higgs.server.store.tables import Base

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `bosonserver migrate`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
