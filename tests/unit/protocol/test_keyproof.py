"""The key proof construction (protocol/keyproof.py): both sides agree, nothing else does."""

from __future__ import annotations

import pytest

from higgs.common.keys import PrivateKey
from higgs.protocol import keyproof


def test_node_and_server_compute_the_same_proof_and_only_they_can() -> None:
    server, node, other = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    key = keyproof.nonce_key(server.raw)
    nonce = keyproof.new_nonce(key, now=1000.0)
    sent = keyproof.node_proof(node.raw, server.public_b64(), nonce)
    assert sent == keyproof.expected_proof(server.raw, node.public_b64(), nonce)
    # Another key, another nonce: another proof.
    assert keyproof.node_proof(other.raw, server.public_b64(), nonce) != sent
    assert keyproof.expected_proof(server.raw, other.public_b64(), nonce) != sent
    nonce2 = keyproof.new_nonce(key, now=1000.0)
    assert nonce2 != nonce
    assert keyproof.node_proof(node.raw, server.public_b64(), nonce2) != sent


def test_nonce_lifetime_and_origin() -> None:
    key = keyproof.nonce_key(PrivateKey.generate().raw)
    nonce = keyproof.new_nonce(key, now=1000.0)
    keyproof.check_nonce(key, nonce, now=1000.0 + keyproof.NONCE_TTL_S)
    with pytest.raises(keyproof.NonceError, match="expired"):
        keyproof.check_nonce(key, nonce, now=1001.0 + keyproof.NONCE_TTL_S)
    with pytest.raises(keyproof.NonceError, match="not issued"):
        keyproof.check_nonce(keyproof.nonce_key(b"x" * 32), nonce, now=1000.0)
    with pytest.raises(keyproof.NonceError, match="length"):
        keyproof.check_nonce(key, "AAAA", now=1000.0)


def test_a_low_order_public_key_is_refused() -> None:
    zero = "A" * 43 + "="  # the all-zero point: every shared secret would be zero
    with pytest.raises(ValueError, match=r"shared key|low-order"):
        keyproof.expected_proof(PrivateKey.generate().raw, zero, "nonce")
