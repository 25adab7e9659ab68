"""Registration challenges: issuing nonces and checking a node's proof of its private key.

The construction is in :mod:`higgs.protocol.keyproof`. Here: the server's static key (created
on first start, ``registration.key`` 0600 in the data directory), stateless nonces, and
single use: a nonce seen in an accepted proof is remembered until it would have expired
anyway.

One process keeps the key in its file and the spent nonces in memory. Instances of a
scale-out deployment share both through the database (:meth:`ChallengeService.shared`): the
key in ``cluster_secrets`` (so a challenge issued by one instance is checked by any other:
the nonce is an HMAC under a key derived from it), the spent nonces in ``used_nonces`` (so a
replay is refused wherever it lands).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from higgs.common.keys import PrivateKey, load_or_create_private_key
from higgs.common.secrets import tokens_equal
from higgs.protocol import keyproof
from higgs.protocol.api import KeyChallenge, KeyProof
from higgs.server.services.errors import Unauthorized
from higgs.server.store import cluster_secrets
from higgs.server.store.db import Database

__all__ = ["SERVER_KEY_FILE", "ChallengeService"]

log = logging.getLogger(__name__)

SERVER_KEY_FILE = "registration.key"

# (nonce, until: epoch seconds) → True the first time, False for a replay.
Spend = Callable[[str, float], Awaitable[bool]]


class ChallengeService:
    def __init__(
        self,
        key: PrivateKey,
        *,
        required: bool,
        ttl_s: float = keyproof.NONCE_TTL_S,
        spend: Spend | None = None,
    ):
        self._key = key
        self._nonce_key = keyproof.nonce_key(key.raw)
        self.public_key = key.public_b64()
        self.required = required
        self.ttl_s = ttl_s
        self._used: dict[str, float] = {}
        self._spend = spend or self._spend_here

    @classmethod
    def load(cls, data_dir: Path, *, required: bool) -> ChallengeService:
        return cls(load_or_create_private_key(data_dir / SERVER_KEY_FILE), required=required)

    @classmethod
    async def shared(cls, db: Database, data_dir: Path, *, required: bool) -> ChallengeService:
        """The deployment's key from the database. The first instance puts it there: the key
        already in its data directory if it has one (nodes keep seeing the same server key
        when a single server becomes a deployment), else a new one."""
        path = data_dir / SERVER_KEY_FILE

        def seed() -> str:
            return (
                load_or_create_private_key(path) if path.exists() else PrivateKey.generate()
            ).b64()

        text = await cluster_secrets.shared_secret(db, cluster_secrets.REGISTRATION_KEY, seed)

        async def spend(nonce: str, until: float) -> bool:
            return await cluster_secrets.spend_nonce(
                db, nonce, datetime.fromtimestamp(until, UTC), datetime.now(UTC)
            )

        return cls(PrivateKey.from_b64(text), required=required, spend=spend)

    def issue(self, now: float | None = None) -> KeyChallenge:
        now = time.time() if now is None else now
        return KeyChallenge(
            nonce=keyproof.new_nonce(self._nonce_key, now),
            server_key=self.public_key,
            expires_in_s=int(self.ttl_s),
        )

    async def verify(
        self, public_key: str, proof: KeyProof | None, now: float | None = None
    ) -> None:
        """Returns when the proof is good (or absent and not required); Unauthorized else."""
        now = time.time() if now is None else now
        if proof is None:
            if self.required:
                raise Unauthorized(
                    "key_proof_required",
                    "body.proof: prove the private key: POST /v1/nodes/challenge, then send "
                    "the proof (docs/protocol.md §2.1)",
                )
            log.warning("node registered without proving its key (require_key_proof is off)")
            return
        try:
            keyproof.check_nonce(self._nonce_key, proof.nonce, now, self.ttl_s)
        except keyproof.NonceError as exc:
            raise Unauthorized("invalid_key_proof", f"body.proof.nonce: {exc}") from None
        try:
            expected = keyproof.expected_proof(self._key.raw, public_key, proof.nonce)
        except ValueError:
            raise Unauthorized("invalid_key_proof", "body.public_key: not a usable key") from None
        if not tokens_equal(expected, proof.mac):
            raise Unauthorized(
                "invalid_key_proof", "body.proof.mac: does not prove the private key"
            )
        if not await self._spend(proof.nonce, now + self.ttl_s):
            raise Unauthorized("invalid_key_proof", "body.proof.nonce: already used")

    async def _spend_here(self, nonce: str, until: float) -> bool:
        now = until - self.ttl_s
        if len(self._used) > 1024:
            self._used = {n: t for n, t in self._used.items() if t > now}
        if nonce in self._used:
            return False
        self._used[nonce] = until
        return True
