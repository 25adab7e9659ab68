"""The database schema (SQLAlchemy 2 declarative). Migrations in ``migrations/`` create it.

Tokens are stored as SHA-256 hex (:func:`higgs.common.secrets.hash_token`), never in clear.
Times are timezone-aware UTC; :class:`UTCDateTime` restores the zone that SQLite drops.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "AdminToken",
    "ApiInstance",
    "Base",
    "Client",
    "ClientUsage",
    "Device",
    "EnrollmentKey",
    "Node",
    "NodePresence",
    "RelayLease",
    "Session",
    "UTCDateTime",
    "WebSessionRow",
]


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware UTC datetimes; returns aware UTC datetimes on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON}


class AdminToken(Base):
    __tablename__ = "admin_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]


class EnrollmentKey(Base):
    __tablename__ = "enrollment_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    uses_left: Mapped[int]
    expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    enrollment_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("enrollment_keys.id", ondelete="SET NULL")
    )
    # Offered for direct mode: the manual endpoint, or the port mapping once verified.
    endpoint: Mapped[str | None] = mapped_column(String(300))
    # The node's router mapping and the nonce of the probe that verifies it
    # (services.reachability).
    mapped_endpoint: Mapped[str | None] = mapped_column(String(300), default=None)
    mapped_method: Mapped[str | None] = mapped_column(String(16), default=None)
    probe_nonce: Mapped[str | None] = mapped_column(String(32), default=None)
    mapped_verified_at: Mapped[datetime | None] = mapped_column(default=None)
    listen_port: Mapped[int]
    tunnel_subnet: Mapped[str] = mapped_column(String(43))
    # The node's IPv6 tunnel prefix when it forwards IPv6 (NAT66); clients' IPv6 addresses are
    # derived from their IPv4 ones (protocol.api.client_address_v6), so sessions need no column.
    tunnel_subnet_v6: Mapped[str | None] = mapped_column(String(43), default=None)
    tunnel_mtu: Mapped[int]
    max_clients: Mapped[int]
    bandwidth_mbps: Mapped[float | None] = mapped_column(Float)
    country: Mapped[str | None] = mapped_column(String(2))
    region: Mapped[str | None] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), index=True)
    registered_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    last_heartbeat_at: Mapped[datetime | None]
    metrics: Mapped[dict[str, Any]]


class Client(Base):
    __tablename__ = "clients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked_at: Mapped[datetime | None]
    # Monthly volume quota (bytes both ways, UTC calendar month); None = unlimited.
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)


class ClientUsage(Base):
    """Bytes a client account moved through nodes in one UTC calendar month (``YYYY-MM``),
    from the nodes' per-peer counters (services/usage.py)."""

    __tablename__ = "client_usage"

    client_id: Mapped[int] = mapped_column(
        ForeignKey("clients.id", ondelete="CASCADE"), primary_key=True
    )
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    rx_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    tx_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class Session(Base):
    __tablename__ = "sessions"
    __table_args__ = (
        # WireGuard peers are keyed by public key and allowed IP: among a node's open sessions
        # both must be unique. Partial indexes let closed sessions keep their history.
        Index(
            "uq_sessions_open_address",
            "node_id",
            "tunnel_address",
            unique=True,
            sqlite_where=text("state = 'open'"),
            postgresql_where=text("state = 'open'"),
        ),
        Index(
            "uq_sessions_open_key",
            "node_id",
            "client_public_key",
            unique=True,
            sqlite_where=text("state = 'open'"),
            postgresql_where=text("state = 'open'"),
        ),
        Index("ix_sessions_state_expires", "state", "expires_at"),
        # Route requests look up which open sessions hold the caller's key.
        Index(
            "ix_sessions_open_client_key",
            "client_public_key",
            sqlite_where=text("state = 'open'"),
            postgresql_where=text("state = 'open'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"), index=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), index=True)
    client_public_key: Mapped[str] = mapped_column(String(64))
    tunnel_address: Mapped[str] = mapped_column(String(43))
    channel: Mapped[int] = mapped_column(BigInteger, unique=True)
    relay_token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    mode: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(8))
    close_reason: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]


class RelayLease(Base):
    """A UDP relay port held by a session (docs/protocol.md §5). Released when the session
    closes (its ``closed_at``); the row stays, and the port stays busy, for the cooldown after
    that, then the next lease on that relay deletes it."""

    __tablename__ = "relay_leases"

    relay_address: Mapped[str] = mapped_column(String(64), primary_key=True)
    port: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), unique=True
    )
    leased_at: Mapped[datetime]
    # The legs' public addresses as the relay bound them ("ip:port"; hole punching reads them).
    client_seen: Mapped[str | None] = mapped_column(String(64), default=None)
    node_seen: Mapped[str | None] = mapped_column(String(64), default=None)
    bound_at: Mapped[datetime | None] = mapped_column(default=None)
    # The client's public ip:port while the node's peer sits on it (hole punched or steered,
    # issue 12; from the node's peer_stats); None while the session is on the relay.
    punched_endpoint: Mapped[str | None] = mapped_column(String(64), default=None)


class RelayHost(Base):
    """One UDP relay host (``bosonserver relay``, or the relay embedded in ``serve``): it
    registers itself and writes ``seen_at`` and a stats snapshot every second; one silent past
    ``relay_host_dead_after_s`` is down, and its sessions move to another (docs/scaleout.md)."""

    __tablename__ = "relay_hosts"

    address: Mapped[str] = mapped_column(String(64), primary_key=True)  # the leases' key
    ports: Mapped[str] = mapped_column(String(16))  # FIRST-LAST
    probe_port: Mapped[int] = mapped_column(Integer)  # the RTT probe (docs/protocol.md §5.5)
    ws_url: Mapped[str | None] = mapped_column(String(300), default=None)
    started_at: Mapped[datetime]
    seen_at: Mapped[datetime]
    stats: Mapped[dict[str, Any]]


class ApiInstance(Base):
    """One running API instance of a scale-out deployment (docs/scaleout.md): it writes
    ``seen_at`` every ``cluster_beat_s``; one silent past ``instance_dead_after_s`` is dead."""

    __tablename__ = "api_instances"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    relay_base: Mapped[str] = mapped_column(String(300))
    seen_at: Mapped[datetime]


class NodePresence(Base):
    """Which instance holds the node's control link (one row per connected node). The truth
    for routing a command to the node; bus messages only hurry it along."""

    __tablename__ = "node_presence"

    node_id: Mapped[str] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
    )
    instance_id: Mapped[str] = mapped_column(String(64), index=True)
    since: Mapped[datetime]
    # Set by an instance whose command to the node may have been lost on the bus: the holder
    # sends the node a full ``sync`` at its next reconciliation and clears it.
    resync: Mapped[bool] = mapped_column(Boolean, default=False)


class ClusterSecret(Base):
    """A secret every instance of a scale-out deployment must share (docs/scaleout.md): the
    first instance to start writes it, the others read it. Today only the registration key
    (the server's static key that makes and checks registration challenges)."""

    __tablename__ = "cluster_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


class UsedNonce(Base):
    """A registration nonce spent by an accepted key proof, kept until it would have expired
    anyway: a replay is refused by whichever instance it reaches."""

    __tablename__ = "used_nonces"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class Device(Base):
    """A named, long-lived peer of a client account (issue 18; docs/server.md "Devices"): an
    official WireGuard app holding an exported config. It owns one session row that never
    expires (the sweep and a node's deregistration skip it), so the node's ``sync``, the UDP
    relay's lease and the usage accounting treat it as any open session; revoking the device
    closes that session. Only the public key is known here: the private key is in the
    exported config alone."""

    __tablename__ = "devices"
    __table_args__ = (
        # A name is unique among the account's live devices; revoked ones keep their history.
        Index(
            "uq_devices_live_name",
            "client_id",
            "name",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    public_key: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), unique=True)
    node_id: Mapped[str] = mapped_column(String(32))
    endpoint: Mapped[str] = mapped_column(String(300))  # what the exported config names
    path: Mapped[str] = mapped_column(String(16))  # "direct" or "udp_relay"
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    # A direct device's app as the node last saw it ("ip:port", from its peer_stats): where
    # the UDP relay sends the node's handshakes once the node lost its direct endpoint.
    app_endpoint: Mapped[str | None] = mapped_column(String(64), default=None)


class WebSessionRow(Base):
    """A logged-in operator's browser (/admin). Only the SHA-256 of the cookie's id is kept:
    the database alone logs no one in. The CSRF token is derived from the id, not stored."""

    __tablename__ = "web_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
