"""Applying Alembic migrations on the server's async engine (no alembic.ini, no shell).

Reading the schema's state (:func:`current_revision`, :func:`head_revision`) does not import
Alembic, which costs a noticeable part of a second: every CLI command and every server start
checks the revision, only ``migrate`` (and ``serve`` on an empty database) upgrades.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from higgs.server.store.db import Database

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["current_revision", "head_revision", "upgrade"]

SCRIPT_LOCATION = "higgs.server.store:migrations"
VERSIONS_DIR = Path(__file__).parent / "migrations" / "versions"
VERSION_TABLE = "alembic_version"


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _assigned(module: ast.Module, name: str) -> object:
    for node in module.body:
        target = None
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            target, value = node.target.id, node.value
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            target, value = node.targets[0].id, node.value
        if target == name and value is not None:
            return ast.literal_eval(value)
    return None


def head_revision() -> str:
    """The newest packaged revision: the one no other migration revises (read from the
    migration files' ``revision``/``down_revision`` without importing Alembic)."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in VERSIONS_DIR.glob("*.py"):
        module = ast.parse(path.read_text(encoding="utf-8"))
        revision = _assigned(module, "revision")
        if not isinstance(revision, str):
            continue
        revisions.add(revision)
        down = _assigned(module, "down_revision")
        if isinstance(down, str):
            revised.add(down)
        elif isinstance(down, tuple | list):
            revised.update(str(d) for d in down)
    heads = sorted(revisions - revised)
    if len(heads) != 1:
        raise RuntimeError(f"the packaged migrations have {len(heads)} heads: {heads}")
    return heads[0]


async def current_revision(db: Database) -> str | None:
    """The schema revision of the database; None for an empty database."""

    def _read(conn: Connection) -> str | None:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        found = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return str(found) if found is not None else None

    async with db.engine.connect() as conn:
        return await conn.run_sync(_read)


async def upgrade(db: Database, revision: str = "head") -> str:
    """Upgrades the schema to ``revision``; returns the resulting revision."""
    from alembic import command

    def _upgrade(conn: Connection) -> None:
        command.upgrade(_config(conn), revision)

    async with db.engine.begin() as conn:
        await conn.run_sync(_upgrade)
    result = await current_revision(db)
    return result or ""
