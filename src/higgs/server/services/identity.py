"""Credentials: the admin token, enrollment keys, client accounts; authenticating callers.

Every credential is random (:func:`higgs.common.secrets.new_token`) and stored as its SHA-256
hash; a token is shown exactly once, when it is created. Lookups go by hash, so comparing is a
database equality (or a dict lookup) on a digest of a 256-bit secret (no timing side channel
worth closing).

A running server caches successful lookups for ``cache_ttl_s`` (see
:mod:`higgs.server.services.credcache`): revoking a client through this service, or a node
re-registering (new token), takes effect at the next request; a revocation written by another
process (the CLI) takes effect within ``cache_ttl_s``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from higgs.common.errors import HiggsError
from higgs.common.keys import write_secret_file
from higgs.common.secrets import hash_token, new_token
from higgs.protocol.api import CLIENT_NAME_PATTERN
from higgs.server.services.clock import utcnow
from higgs.server.services.credcache import CredentialCache
from higgs.server.services.errors import Conflict, Forbidden, NotFound, Unauthorized
from higgs.server.store import credentials
from higgs.server.store.db import Database

__all__ = [
    "ADMIN_TOKEN_FILE",
    "AuthedClient",
    "ClientRecord",
    "EnrollmentRecord",
    "IdentityService",
    "NodeClaim",
    "parse_expiry",
    "validate_client_name",
]


@dataclass(frozen=True, slots=True)
class NodeClaim:
    """A node token presented for ``node_id`` (:meth:`IdentityService.claim_node`):
    ``token_hash`` None when the credential cache vouched for it, else the token's hash, to be
    proved by the caller's own statement; ``epoch``: the cache's, read before that."""

    node_id: str
    token_hash: str | None
    epoch: int


ADMIN_TOKEN_FILE = "admin.token"  # noqa: S105 - a file name, not a secret
_NAME_RE = re.compile(CLIENT_NAME_PATTERN)
_DURATION_RE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def validate_client_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise HiggsError(
            f"client name {name!r} is invalid: use 1-64 letters, digits, '_', '.', '@', '-'"
        )
    return name


def parse_expiry(text: str, now: datetime) -> datetime:
    """``30m``, ``1h``, ``7d`` or an ISO 8601 time (UTC if no zone) → an aware datetime."""
    match = _DURATION_RE.match(text.strip())
    if match:
        return now + timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise HiggsError(
            f"--expires {text!r}: use a duration like 30m, 1h, 7d or an ISO time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=now.tzinfo)
    if when <= now:
        raise HiggsError(f"--expires {text!r} is in the past")
    return when


@dataclass(frozen=True)
class AuthedClient:
    id: int
    name: str


@dataclass(frozen=True)
class ClientRecord:
    name: str
    created_at: datetime
    revoked: bool
    revoked_at: datetime | None
    open_sessions: int


@dataclass(frozen=True)
class EnrollmentRecord:
    id: int
    uses_left: int
    expires_at: datetime | None
    created_at: datetime


class IdentityService:
    def __init__(self, db: Database, cache_ttl_s: float = 0.0) -> None:
        self.db = db
        self._admins: CredentialCache[bool] = CredentialCache(cache_ttl_s)
        self._nodes: CredentialCache[str] = CredentialCache(cache_ttl_s)
        self._clients: CredentialCache[AuthedClient] = CredentialCache(cache_ttl_s)
        # Scale-out: told "clients" / "nodes" after a revocation here, so that the other
        # instances drop their cached entries too (server/cluster/; None when embedded).
        self.on_revoked: Callable[[str], None] | None = None

    # --- admin ----------------------------------------------------------------------------

    async def ensure_admin_token(self, data_dir: Path) -> str | None:
        """Creates the admin token on first start; returns it then (to print once), else None."""
        async with self.db.transaction() as s:
            if await credentials.admin_tokens(s):
                return None
            token = new_token("hga_")
            credentials.add_admin_token(s, hash_token(token), utcnow())
        write_secret_file(data_dir / ADMIN_TOKEN_FILE, token + "\n")
        return token

    async def check_admin(self, token: str) -> None:
        digest = hash_token(token)
        if self._admins.get(digest):
            return
        epoch = self._admins.epoch
        async with self.db.begin() as conn:
            found = await credentials.admin_by_token(conn, digest)
        if found is None:
            raise Unauthorized("invalid_token", "the admin token is not valid")
        self._admins.put(digest, True, epoch)

    # --- enrollment -----------------------------------------------------------------------

    async def create_enrollment_key(self, uses: int = 1, expires_at: datetime | None = None) -> str:
        if uses < 1:
            raise HiggsError("--uses must be at least 1")
        key = new_token("hge_")
        async with self.db.transaction() as s:
            credentials.add_enrollment_key(s, hash_token(key), uses, expires_at, utcnow())
        return key

    async def list_enrollment_keys(self) -> list[EnrollmentRecord]:
        async with self.db.transaction() as s:
            rows = await credentials.enrollment_keys(s)
        return [EnrollmentRecord(r.id, r.uses_left, r.expires_at, r.created_at) for r in rows]

    async def revoke_enrollment_key(self, key_id: int) -> None:
        """No further node can enroll with the key (its uses drop to zero)."""
        async with self.db.transaction() as s:
            row = await credentials.enrollment_for_update(s, key_id)
            if row is None:
                raise NotFound("enrollment_key_not_found", f"no enrollment key {key_id}")
            row.uses_left = 0

    @staticmethod
    async def consume_enrollment_key(s: AsyncSession, key: str) -> int:
        """Uses one use of the key inside the caller's transaction (race-free: see
        :func:`higgs.server.store.credentials.use_enrollment_key`); returns the key's id.
        Only a refused use reads the row again, to say why."""
        digest = hash_token(key)
        used = await credentials.use_enrollment_key(s, digest, utcnow())
        if used is not None:
            return used
        row = await credentials.enrollment_by_hash(s, digest)
        if row is None:
            raise Unauthorized("invalid_token", "the enrollment key is not valid")
        if row.uses_left < 1:
            raise Unauthorized("exhausted_token", "the enrollment key has no uses left")
        raise Unauthorized("expired_token", "the enrollment key has expired")

    # --- nodes ----------------------------------------------------------------------------

    async def node_for_token(self, token: str) -> str:
        """The node id the token belongs to; Unauthorized otherwise."""
        digest = hash_token(token)
        cached = self._nodes.get(digest)
        if cached is not None:
            return cached
        epoch = self._nodes.epoch
        node_id = await self.db.run(lambda conn: credentials.node_by_token(conn, digest))
        if node_id is None:
            raise Unauthorized("invalid_token", "the node token is not valid")
        self._nodes.put(digest, node_id, epoch)
        return node_id

    def claim_node(self, token: str, node_id: str) -> NodeClaim:
        """A node token presented for ``node_id``, checked against the cache only: Forbidden
        when the cache says it is another node's; a claim still to be proved (``token_hash``
        set) when the cache does not know it. The caller proves it in its own statement (a
        heartbeat: the UPDATE's condition) and passes the claim to :meth:`node_proved`."""
        digest = hash_token(token)
        cached = self._nodes.get(digest)
        if cached is not None:
            if cached != node_id:
                raise Forbidden("forbidden", "a node token can act only for its own node")
            return NodeClaim(node_id, None, self._nodes.epoch)
        return NodeClaim(node_id, digest, self._nodes.epoch)

    def node_proved(self, claim: NodeClaim) -> None:
        """The claim's token matched its node in the database: cached as a lookup would be."""
        if claim.token_hash is not None:
            self._nodes.put(claim.token_hash, claim.node_id, claim.epoch)

    @staticmethod
    def check_claim(conn: Connection, claim: NodeClaim) -> None:
        """Why a claim's statement matched no row, when the token is the reason: Unauthorized
        (no node has it) or Forbidden (another node's), as :meth:`node_for_token` says."""
        if claim.token_hash is None:
            return
        own = credentials.node_by_token(conn, claim.token_hash)
        if own is None:
            raise Unauthorized("invalid_token", "the node token is not valid")
        if own != claim.node_id:
            raise Forbidden("forbidden", "a node token can act only for its own node")

    def forget_node(self, node_id: str) -> None:
        """The node's token changed (re-registration): its old token stops working now."""
        self._nodes.drop_where(lambda cached: cached == node_id)
        if self.on_revoked is not None:
            self.on_revoked("nodes")

    # --- clients --------------------------------------------------------------------------

    async def add_client(self, name: str) -> str:
        validate_client_name(name)
        token = new_token("hgc_")
        async with self.db.transaction() as s:
            if await credentials.client_id(s, name) is not None:
                raise Conflict("client_exists", f"a client named {name!r} already exists")
            credentials.add_client(s, name, hash_token(token), utcnow())
        return token

    async def list_clients(self) -> list[ClientRecord]:
        async with self.db.transaction() as s:
            rows = await credentials.clients_with_open_sessions(s)
        return [ClientRecord(c.name, c.created_at, c.revoked, c.revoked_at, n) for c, n in rows]

    async def mark_revoked(self, name: str) -> int:
        """Marks the client revoked; returns its id (the caller closes its sessions).
        Its token is refused from the next request on (the cached entry is dropped)."""
        async with self.db.transaction() as s:
            row = await credentials.client_for_update(s, name)
            if row is None:
                raise NotFound("client_not_found", f"no client named {name!r}")
            if not row.revoked:
                row.revoked = True
                row.revoked_at = utcnow()
            client_id = row.id
        # After the commit: a lookup that began earlier holds an older epoch and is not stored.
        self._clients.drop_where(lambda cached: cached.id == client_id)
        if self.on_revoked is not None:
            self.on_revoked("clients")
        return client_id

    def drop_cached(self, kind: str) -> None:
        """Another instance revoked a credential of this kind: forget every cached one."""
        if kind == "clients":
            self._clients.clear()
        elif kind == "nodes":
            self._nodes.clear()

    async def authenticate_client(self, token: str) -> AuthedClient:
        digest = hash_token(token)
        cached = self._clients.get(digest)
        if cached is not None:
            return cached
        epoch = self._clients.epoch
        row = await self.db.run(lambda conn: credentials.client_by_token(conn, digest))
        if row is None:
            raise Unauthorized("invalid_token", "the client token is not valid")
        if row.revoked:
            raise Unauthorized("revoked_token", "the client token has been revoked")
        client = AuthedClient(row.id, row.name)
        self._clients.put(digest, client, epoch)
        return client
