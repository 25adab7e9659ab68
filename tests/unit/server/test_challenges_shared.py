"""Two instances' challenge services on one key and one spent-nonce store (the database's
``used_nonces`` in a deployment; here its in-memory stand-in, no database)."""

from __future__ import annotations

import pytest

from higgs.common.keys import PrivateKey
from higgs.protocol import keyproof
from higgs.protocol.api import KeyProof
from higgs.server.services.errors import Unauthorized
from higgs.server.services.keyproof import ChallengeService


def pair() -> tuple[ChallengeService, ChallengeService]:
    spent: set[str] = set()

    async def spend(nonce: str, _until: float) -> bool:
        if nonce in spent:
            return False
        spent.add(nonce)
        return True

    key = PrivateKey.generate()
    return (
        ChallengeService(key, required=True, spend=spend),
        ChallengeService(key, required=True, spend=spend),
    )


async def test_a_challenge_of_one_instance_is_proved_on_the_other_once() -> None:
    a, b = pair()
    node = PrivateKey.generate()
    challenge = a.issue()
    mac = keyproof.node_proof(node.raw, challenge.server_key, challenge.nonce)
    proof = KeyProof(nonce=challenge.nonce, mac=mac)
    await b.verify(node.public_b64(), proof)
    for instance in (a, b):
        with pytest.raises(Unauthorized, match="already used"):
            await instance.verify(node.public_b64(), proof)


async def test_a_nonce_of_another_deployment_is_refused() -> None:
    a, _b = pair()
    stranger = ChallengeService(PrivateKey.generate(), required=True)
    node = PrivateKey.generate()
    challenge = stranger.issue()
    mac = keyproof.node_proof(node.raw, challenge.server_key, challenge.nonce)
    with pytest.raises(Unauthorized, match="not issued by this server"):
        await a.verify(node.public_b64(), KeyProof(nonce=challenge.nonce, mac=mac))
