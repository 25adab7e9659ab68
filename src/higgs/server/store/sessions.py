"""The session table's reads and writes: every statement the session services run.

The services decide *what* happens to a session (open, renew, close, expire); this module only
says how it is read and written. Hot-path statements are the prebuilt ones of
:mod:`higgs.server.store.queries`; rows leave as detached :class:`Session` objects (the
session maker does not expire them on commit), so a caller may read them after the
transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, select, update

from higgs.server.store import queries
from higgs.server.store.db import Database
from higgs.server.store.states import SessionState
from higgs.server.store.tables import Client
from higgs.server.store.tables import Session as SessionRow

__all__ = [
    "admin_rows",
    "close_open_sessions",
    "close_own",
    "close_replaced",
    "closed_among",
    "extend",
    "insert",
    "key_holders",
    "open_addresses",
    "open_rows",
    "renew_keys",
    "renew_own",
    "session_by_id",
]

_CHUNK = 500  # ids per IN (...) list


def _columns(row: SessionRow) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in SessionRow.__table__.columns}


def _row(mapping: Any) -> SessionRow:
    """A detached SessionRow from a Core result row (for announcing and answering)."""
    return SessionRow(**dict(mapping._mapping))


# --- opening (inside the caller's route transaction) ------------------------------------------


# Synchronous: the route's unit of work runs in :meth:`Database.run`.


def key_holders(conn: Connection, public_key: str) -> dict[str, SessionRow]:
    """Open sessions holding ``public_key``, by node (at most one per node)."""
    rows = conn.execute(queries.KEY_HOLDERS, {"public_key": public_key}).all()
    return {r.node_id: _row(r) for r in rows}


def open_addresses(conn: Connection, node_id: str) -> list[str]:
    """The tunnel addresses of the node's open sessions."""
    return list(conn.scalars(queries.OPEN_ADDRESSES, {"node_id": node_id}).all())


def close_replaced(conn: Connection, session_id: str, now: datetime) -> bool:
    """Closes the session with reason ``replaced`` if it is still open; True when it was."""
    closed = conn.execute(
        update(SessionRow)
        .where(SessionRow.id == session_id, SessionRow.state == SessionState.OPEN)
        .values(state=SessionState.CLOSED, close_reason="replaced", closed_at=now)
    )
    return bool(closed.rowcount)


def insert(conn: Connection, row: SessionRow) -> None:
    """Inserts the new session; IntegrityError when a unique index says another won a race."""
    conn.execute(queries.INSERT_SESSION, _columns(row))


# --- reading ----------------------------------------------------------------------------------


async def session_by_id(db: Database, session_id: str) -> SessionRow | None:
    async with db.transaction() as s:
        return await s.get(SessionRow, session_id)


async def open_rows(db: Database, node_id: str | None = None) -> list[SessionRow]:
    """Open sessions (of one node, or all), oldest first."""
    query = select(SessionRow).where(SessionRow.state == SessionState.OPEN)
    if node_id is not None:
        query = query.where(SessionRow.node_id == node_id)
    async with db.transaction() as s:
        return list((await s.scalars(query.order_by(SessionRow.created_at))).all())


async def closed_among(db: Database, ids: Sequence[str]) -> list[SessionRow]:
    """Which of these sessions the database holds as closed."""
    closed: list[SessionRow] = []
    for start in range(0, len(ids), _CHUNK):
        async with db.transaction() as s:
            closed += (
                await s.scalars(
                    select(SessionRow).where(
                        SessionRow.id.in_(ids[start : start + _CHUNK]),
                        SessionRow.state == SessionState.CLOSED,
                    )
                )
            ).all()
    return closed


async def admin_rows(db: Database, state: str | None = None) -> list[tuple[SessionRow, str]]:
    """Every session (or those in ``state``) with its client's name, oldest first."""
    query = select(SessionRow, Client.name).join(Client, Client.id == SessionRow.client_id)
    if state is not None:
        query = query.where(SessionRow.state == state)
    async with db.transaction() as s:
        rows = (await s.execute(query.order_by(SessionRow.created_at))).all()
    return [(row, name) for row, name in rows]


# --- renewing ---------------------------------------------------------------------------------


async def renew_own(
    db: Database, session_id: str, owner_id: int, expires_at: datetime
) -> SessionRow | None:
    """Moves the expiry of the owner's session if it is open. Returns the row as it is now
    (closed rows unchanged), or None when it does not exist or is another client's."""
    async with db.transaction() as s:
        row = await s.get(SessionRow, session_id)
        if row is None or row.client_id != owner_id:
            return None
        if row.state == SessionState.OPEN:
            row.expires_at = expires_at
        return row


async def extend(db: Database, ids: Sequence[str], expires_at: datetime) -> None:
    """Moves the expiry of those of these sessions that are open."""
    async with db.transaction() as s:
        await s.execute(
            update(SessionRow)
            .where(SessionRow.id.in_(ids), SessionRow.state == SessionState.OPEN)
            .values(expires_at=expires_at)
        )


def renew_keys(conn: Connection, node_id: str, keys: Sequence[str], expires_at: datetime) -> None:
    """Moves the expiry of the node's open sessions of these keys (in the caller's
    transaction, e.g. the heartbeat's; synchronous, see :meth:`Database.run`)."""
    conn.execute(
        update(SessionRow)
        .where(
            SessionRow.node_id == node_id,
            SessionRow.state == SessionState.OPEN,
            SessionRow.client_public_key.in_(keys),
        )
        .values(expires_at=expires_at)
    )


# --- closing ----------------------------------------------------------------------------------


async def close_own(
    db: Database,
    session_id: str,
    owner_id: int,
    reason: str,
    now: datetime,
    before_commit: Callable[[SessionRow], None],
) -> tuple[SessionRow | None, bool]:
    """Closes the owner's session if it is open (one UPDATE). Returns ``(row, closed)``:
    the row as it is now and whether this call closed it; ``(None, False)`` when it does not
    exist or is another client's. ``before_commit`` sees a row this call closed before the
    transaction commits."""
    params = {"session_id": session_id, "owner_id": owner_id, "reason": reason, "now": now}

    def unit(conn: Connection) -> tuple[SessionRow | None, bool]:
        closed = conn.execute(queries.CLOSE_OWN_SESSION, params).first()
        if closed is not None:
            row = _row(closed)
            before_commit(row)
            return row, True
        found = conn.execute(queries.SESSION_BY_ID, {"session_id": session_id}).first()
        if found is None or found.client_id != owner_id:
            return None, False
        return _row(found), False

    return await db.run(unit)


async def close_open_sessions(
    db: Database,
    reason: str,
    *conditions: ColumnElement[bool],
    before_commit: Callable[[Sequence[SessionRow]], None] | None = None,
) -> list[SessionRow]:
    """Marks the open sessions matching ``conditions`` closed, in the database only (the CLI
    uses this directly; a running server announces them at its next sweep, see
    :meth:`higgs.server.services.sessions.SessionService.reconcile`)."""
    async with db.transaction() as s:
        rows = list(
            (
                await s.scalars(
                    select(SessionRow)
                    .where(SessionRow.state == SessionState.OPEN, *conditions)
                    .with_for_update()
                )
            ).all()
        )
        now = datetime.now(UTC)
        for row in rows:
            row.state, row.close_reason, row.closed_at = SessionState.CLOSED, reason, now
        if before_commit is not None:
            before_commit(rows)
    return rows
