"""The statements on the hot paths (authentication, heartbeats, routes, closes), built once.

Building a SQLAlchemy statement per request (``update(Node).where(...).values(...)``) and
generating its cache key costs more than executing it on SQLite (bench/profile, issue 3); these
are module-level Core statements with named parameters, executed on a connection with a dict.
Conditions on open sessions are rendered as the literal ``state = 'open'`` so that SQLite can
use the partial indexes over open sessions (a bound parameter would hide the match).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    ColumnElement,
    Table,
    bindparam,
    case,
    func,
    insert,
    literal_column,
    select,
    update,
)

from higgs.server.store.tables import AdminToken, Client, Node, UTCDateTime
from higgs.server.store.tables import Session as SessionRow

__all__ = [
    "ADMIN_BY_TOKEN",
    "CLIENT_BY_TOKEN",
    "CLOSE_OWN_SESSION",
    "HEARTBEAT",
    "HEARTBEAT_AS_OWNER",
    "INSERT_SESSION",
    "KEY_HOLDERS",
    "NODE_BY_TOKEN",
    "NODE_STATE",
    "OPEN_ADDRESSES",
    "SESSION_BY_ID",
    "open_session_condition",
]

_admins: Table = AdminToken.__table__  # type: ignore[assignment]
_clients: Table = Client.__table__  # type: ignore[assignment]
_nodes: Table = Node.__table__  # type: ignore[assignment]
_sessions: Table = SessionRow.__table__  # type: ignore[assignment]


def open_session_condition() -> ColumnElement[bool]:
    return _sessions.c.state == literal_column("'open'")


ADMIN_BY_TOKEN = select(_admins.c.id).where(_admins.c.token_hash == bindparam("token_hash"))
CLIENT_BY_TOKEN = select(_clients.c.id, _clients.c.name, _clients.c.revoked).where(
    _clients.c.token_hash == bindparam("token_hash")
)
NODE_BY_TOKEN = select(_nodes.c.id).where(_nodes.c.token_hash == bindparam("token_hash"))

# Parameters: node_id, now, node_metrics, tunnel_mtu (None: unchanged). ``updated_at`` (the
# time of the last state change) moves only when the node comes back from offline; it is
# returned so the caller can tell.
HEARTBEAT = (
    update(_nodes)
    .where(_nodes.c.id == bindparam("node_id"), _nodes.c.state != "stopped")
    .values(
        state="online",
        last_heartbeat_at=bindparam("now", type_=UTCDateTime()),
        metrics=bindparam("node_metrics", type_=JSON()),
        tunnel_mtu=func.coalesce(bindparam("tunnel_mtu"), _nodes.c.tunnel_mtu),
        updated_at=case(
            (_nodes.c.state != "online", bindparam("now", type_=UTCDateTime())),
            else_=_nodes.c.updated_at,
        ),
    )
    .returning(_nodes.c.updated_at)
)
# The same, when the node's token was not in the credential cache: parameter owner_token_hash
# so the token is checked by the UPDATE itself (no lookup of its own). No row: ask why.
# (owner_token_hash, not token_hash: an UPDATE reserves its column names for SET values.)
HEARTBEAT_AS_OWNER = HEARTBEAT.where(_nodes.c.token_hash == bindparam("owner_token_hash"))
NODE_STATE = select(_nodes.c.state).where(_nodes.c.id == bindparam("node_id"))

# Parameter: public_key. Which open sessions hold the caller's WireGuard key, on which node.
KEY_HOLDERS = select(_sessions).where(
    open_session_condition(), _sessions.c.client_public_key == bindparam("public_key")
)
# Parameter: node_id. The tunnel addresses in use on the node.
OPEN_ADDRESSES = select(_sessions.c.tunnel_address).where(
    _sessions.c.node_id == bindparam("node_id"), open_session_condition()
)
INSERT_SESSION = insert(_sessions)
SESSION_BY_ID = select(_sessions).where(_sessions.c.id == bindparam("session_id"))
# Parameters: session_id, owner_id, reason, now. Returns the closed row, or nothing when the
# session is not this client's or not open.
CLOSE_OWN_SESSION = (
    update(_sessions)
    .where(
        _sessions.c.id == bindparam("session_id"),
        _sessions.c.client_id == bindparam("owner_id"),
        open_session_condition(),
    )
    .values(
        state="closed",
        close_reason=bindparam("reason"),
        closed_at=bindparam("now", type_=UTCDateTime()),
    )
    .returning(*_sessions.c)
)
