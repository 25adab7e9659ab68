"""Byte vectors for the UDP relay tests (also printed in docs/protocol.md §5).

``INITIATION`` is a real handshake initiation captured from wireguard-go 0.0.2023 (a
throw-away key pair; only the recipient's *public* key is kept, for its mac1). The other
messages are built here with the same mac1 rule, keyed by fixed test public keys.
"""

from __future__ import annotations

import base64
import hashlib

RECIPIENT_PUB = base64.b64decode("yftnihtnyVAk9rl7bJB0W2pdCW2oWrK+U058k+n17wY=")
INITIATION = bytes.fromhex(
    "010000004dbf40a7d57eb52018ef91cb8f66a2c7716a3065db77c9aac1a2c6b62e637656"
    "897428686d1f19931c044ac8eeb68803fb319433f2795fb6901dc08096561a6b87123285"
    "508f18c9ea92129e95bd0b3ed5ab64232d2cd1ea1cb11dc5d733a3e45cf0e27c25fc7f2b"
    "4f4f9137218ea0682147e4455f1e834fe978941667f90bca0000000000000000000000000"
    "0000000"
)
INITIATION_SENDER = 0xA740BF4D
INITIATION_MAC1 = "2147e4455f1e834fe978941667f90bca"

CLIENT_PUB = bytes(range(32))
NODE_PUB = bytes(range(32, 64))


def _mac1(recipient: bytes, body: bytes) -> bytes:
    key = hashlib.blake2s(b"mac1----" + recipient).digest()
    return hashlib.blake2s(body, digest_size=16, key=key).digest()


def initiation(sender: int, recipient: bytes, filler: int = 0x11) -> bytes:
    body = b"\x01\0\0\0" + sender.to_bytes(4, "little") + bytes([filler]) * 108
    return body + _mac1(recipient, body) + bytes(16)


def response(sender: int, receiver: int, recipient: bytes) -> bytes:
    body = b"\x02\0\0\0" + sender.to_bytes(4, "little") + receiver.to_bytes(4, "little") + bytes(48)
    return body + _mac1(recipient, body) + bytes(16)


def cookie(receiver: int) -> bytes:
    return b"\x03\0\0\0" + receiver.to_bytes(4, "little") + bytes(56)


def data(receiver: int, counter: int = 0, payload: int = 16) -> bytes:
    return (
        b"\x04\0\0\0"
        + receiver.to_bytes(4, "little")
        + counter.to_bytes(8, "little")
        + bytes(payload)
    )
