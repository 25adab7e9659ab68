"""Proof that a registering node holds the private key of the public key it announces.

A WireGuard key is an X25519 key: it cannot sign, but it can agree. The server keeps a static
X25519 key pair of its own (``registration.key`` in its data directory) and publishes the
public half with every challenge. Only the holder of the node's private key (or of the
server's) can compute their shared secret, so a MAC keyed by it proves possession to the server
(to the server only: the proof convinces no third party, which is all registration needs).

Flow (docs/protocol.md §2.1):

1. ``POST /v1/nodes/challenge`` → ``{"nonce", "server_key", "expires_in_s"}``. The nonce is
   stateless: ``b64url(issued_at u64 BE ‖ 16 random bytes ‖ HMAC-SHA256(k_nonce, both)[:16])``,
   so issuing costs the server no storage; it is single use and expires after
   ``expires_in_s`` (:data:`NONCE_TTL_S`).
2. The node computes ``shared = X25519(node_private, server_key)``,
   ``k = HKDF-SHA256(shared, salt=server_key ‖ node_public, info=PROOF_INFO, 32 bytes)`` and
   ``mac = HMAC-SHA256(k, PROOF_INFO ‖ nonce ‖ node_public)``, and registers with
   ``"proof": {"nonce": nonce, "mac": b64(mac)}``.
3. The server recomputes ``mac`` with ``X25519(server_private, node_public)`` and compares in
   constant time. Binding ``node_public`` into the salt and the MAC keeps a proof from being
   moved to another key; the all-zero shared secret of a low-order public key is refused.

Version: ``PROOF_INFO`` names the version; another construction gets another label.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "NONCE_TTL_S",
    "PROOF_INFO",
    "NonceError",
    "check_nonce",
    "expected_proof",
    "new_nonce",
    "node_proof",
    "nonce_key",
]

PROOF_INFO = b"higgs.net node key proof v1"
NONCE_TTL_S = 120
_NONCE_LEN = 8 + 16 + 16


class NonceError(ValueError):
    """The nonce is malformed, forged or expired (the message says which)."""


def _b64d(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise ValueError("not valid base64") from exc


def _public_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def _mac(own_private: bytes, peer_public: bytes, server: bytes, node: bytes, nonce: str) -> str:
    shared = X25519PrivateKey.from_private_bytes(own_private).exchange(
        X25519PublicKey.from_public_bytes(peer_public)
    )
    if not any(shared):
        raise ValueError("low-order public key")
    k = HKDF(algorithm=hashes.SHA256(), length=32, salt=server + node, info=PROOF_INFO).derive(
        shared
    )
    mac = hmac.new(k, PROOF_INFO + nonce.encode() + node, hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def node_proof(node_private: bytes, server_public_b64: str, nonce: str) -> str:
    """What the node sends: the MAC over ``nonce`` keyed by its DH with the server's key."""
    server = _b64d(server_public_b64)
    return _mac(node_private, server, server, _public_of(node_private), nonce)


def expected_proof(server_private: bytes, node_public_b64: str, nonce: str) -> str:
    """What the server expects from the holder of ``node_public``'s private key; raises
    ValueError for a key that cannot be a real peer (low order: all-zero shared secret)."""
    node = _b64d(node_public_b64)
    return _mac(server_private, node, _public_of(server_private), node, nonce)


def nonce_key(server_private: bytes) -> bytes:
    """The nonce MAC key, derived from the server's static key (no second secret to keep)."""
    return hashlib.sha256(b"higgs.net nonce key v1" + server_private).digest()


def new_nonce(key: bytes, now: float) -> str:
    body = struct.pack(">Q", int(now)) + secrets.token_bytes(16)
    tag = hmac.new(key, body, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(body + tag).decode()


def check_nonce(key: bytes, nonce: str, now: float, ttl_s: float = NONCE_TTL_S) -> None:
    """Raises NonceError unless ``nonce`` was issued with ``key`` less than ``ttl_s`` ago."""
    try:
        raw = base64.urlsafe_b64decode(nonce.encode())
    except ValueError:
        raise NonceError("the nonce is not valid base64") from None
    if len(raw) != _NONCE_LEN:
        raise NonceError("the nonce has the wrong length")
    body, tag = raw[:24], raw[24:]
    if not hmac.compare_digest(tag, hmac.new(key, body, hashlib.sha256).digest()[:16]):
        raise NonceError("the nonce was not issued by this server")
    (issued,) = struct.unpack(">Q", body[:8])
    if not issued - 5 <= now <= issued + ttl_s:
        raise NonceError("the nonce has expired; ask for a new challenge")
