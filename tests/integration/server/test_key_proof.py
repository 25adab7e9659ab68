"""Registration proves the private key (docs/protocol.md §2.1, protocol/keyproof.py): over
real HTTP, with the server's default (proof required)."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from higgs.common.keys import PrivateKey
from higgs.protocol import keyproof
from tests.integration.server.conftest import Harness, bearer, node_body

pytestmark = pytest.mark.parametrize("settings_overrides", [{"require_key_proof": True}])


async def _challenge(srv: Harness) -> dict[str, Any]:
    r = await srv.http.post("/v1/nodes/challenge", headers=bearer(await srv.enrollment_key()))
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def _proof(key: PrivateKey, challenge: dict[str, Any]) -> dict[str, str]:
    mac = keyproof.node_proof(key.raw, challenge["server_key"], challenge["nonce"])
    return {"nonce": challenge["nonce"], "mac": mac}


async def _register(srv: Harness, key: PrivateKey, proof: dict[str, str] | None) -> Any:
    body = node_body(public_key=key.public_b64())
    if proof is not None:
        body["proof"] = proof
    return await srv.http.post(
        "/v1/nodes/register", json=body, headers=bearer(await srv.enrollment_key())
    )


async def test_a_node_that_proves_its_key_registers(srv: Harness) -> None:
    key = PrivateKey.generate()
    r = await _register(srv, key, _proof(key, await _challenge(srv)))
    assert r.status_code == 201, r.text
    # The server's key is stable (kept 0600 in the data directory).
    assert (await _challenge(srv))["server_key"] == (await _challenge(srv))["server_key"]
    path = srv.settings.data_dir / "registration.key"
    assert path.stat().st_mode & 0o777 == 0o600


async def test_registration_without_proof_is_refused(srv: Harness) -> None:
    r = await _register(srv, PrivateKey.generate(), None)
    assert r.status_code == 401
    assert r.json()["error"] == "key_proof_required"


async def test_someone_elses_public_key_cannot_be_registered(srv: Harness) -> None:
    victim, mallory = PrivateKey.generate(), PrivateKey.generate()
    # Mallory announces the victim's public key with a proof made with her own key.
    r = await _register(srv, victim, _proof(mallory, await _challenge(srv)))
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_key_proof"
    assert "mac" in r.json()["message"]


async def test_a_proof_is_single_use(srv: Harness) -> None:
    key = PrivateKey.generate()
    proof = _proof(key, await _challenge(srv))
    assert (await _register(srv, key, proof)).status_code == 201
    again = await _register(srv, key, proof)
    assert again.status_code == 401
    assert "already used" in again.json()["message"]


async def test_forged_and_expired_nonces_are_refused(srv: Harness) -> None:
    key = PrivateKey.generate()
    challenge = await _challenge(srv)
    raw = bytearray(base64.urlsafe_b64decode(challenge["nonce"]))
    raw[10] ^= 1
    forged = {**challenge, "nonce": base64.urlsafe_b64encode(bytes(raw)).decode()}
    r = await _register(srv, key, _proof(key, forged))
    assert r.status_code == 401
    assert "not issued by this server" in r.json()["message"]
    challenges = srv.ctx.registry.challenges
    old = challenges.issue(now=time.time() - keyproof.NONCE_TTL_S - 5)
    r = await _register(srv, key, _proof(key, old.model_dump()))
    assert r.status_code == 401
    assert "expired" in r.json()["message"]
