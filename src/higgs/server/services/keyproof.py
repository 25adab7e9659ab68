"""Registration challenges: issuing nonces and checking a node's proof of its private key.

The construction is in :mod:`higgs.protocol.keyproof`. Here: the server's static key (created
on first start, ``registration.key`` 0600 in the data directory), stateless nonces, and
single use: a nonce seen in an accepted proof is remembered until it would have expired
anyway (in memory: a second server process would accept it once more within the TTL, which
still requires the private key).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from higgs.common.keys import PrivateKey, load_or_create_private_key
from higgs.common.secrets import tokens_equal
from higgs.protocol import keyproof
from higgs.protocol.api import KeyChallenge, KeyProof
from higgs.server.services.errors import Unauthorized

__all__ = ["SERVER_KEY_FILE", "ChallengeService"]

log = logging.getLogger(__name__)

SERVER_KEY_FILE = "registration.key"


class ChallengeService:
    def __init__(self, key: PrivateKey, *, required: bool, ttl_s: float = keyproof.NONCE_TTL_S):
        self._key = key
        self._nonce_key = keyproof.nonce_key(key.raw)
        self.public_key = key.public_b64()
        self.required = required
        self.ttl_s = ttl_s
        self._used: dict[str, float] = {}

    @classmethod
    def load(cls, data_dir: Path, *, required: bool) -> ChallengeService:
        return cls(load_or_create_private_key(data_dir / SERVER_KEY_FILE), required=required)

    def issue(self, now: float | None = None) -> KeyChallenge:
        now = time.time() if now is None else now
        return KeyChallenge(
            nonce=keyproof.new_nonce(self._nonce_key, now),
            server_key=self.public_key,
            expires_in_s=int(self.ttl_s),
        )

    def verify(self, public_key: str, proof: KeyProof | None, now: float | None = None) -> None:
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
        self._forget_expired(now)
        if proof.nonce in self._used:
            raise Unauthorized("invalid_key_proof", "body.proof.nonce: already used")
        self._used[proof.nonce] = now + self.ttl_s

    def _forget_expired(self, now: float) -> None:
        if len(self._used) > 1024:
            self._used = {n: until for n, until in self._used.items() if until > now}
