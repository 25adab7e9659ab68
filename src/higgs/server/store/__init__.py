"""Persistence: schema, database access, Alembic migrations."""
