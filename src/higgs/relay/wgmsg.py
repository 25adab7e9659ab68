"""The few WireGuard message fields the UDP relay reads (sans-I/O, no key material but public keys).

Layout (little-endian integers; offsets in bytes; ``wireguard-go device/noise-protocol.go``)::

    type 1  handshake initiation, exactly 148 bytes
            0 type=1 | 1..3 reserved=0 | 4 sender u32 | 8 ephemeral[32] | 40 static[48]
            88 timestamp[28] | 116 mac1[16] | 132 mac2[16]
    type 2  handshake response, exactly 92 bytes
            0 type=2 | 1..3 reserved=0 | 4 sender u32 | 8 receiver u32 | 12 ephemeral[32]
            44 empty[16] | 60 mac1[16] | 76 mac2[16]
    type 3  cookie reply, exactly 64 bytes
            0 type=3 | 1..3 reserved=0 | 4 receiver u32 | 8 nonce[24] | 32 cookie[32]
    type 4  transport data, at least 32 bytes (a keepalive is exactly 32)
            0 type=4 | 1..3 reserved=0 | 4 receiver u32 | 8 counter u64 | 16 ciphertext[>=16]

``mac1 = BLAKE2s-128(key=BLAKE2s-256("mac1----" || recipient's static public key),
msg[:offset of mac1])``. The relay knows both public keys of a session (the server issued the
session), so a valid mac1 says which way an initiation or response travels (toward the node,
or toward the client) and drops garbage before any state changes. mac2 (cookie, under load)
is not checked: it is keyed by a secret of the recipient.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "COOKIE_REPLY_SIZE",
    "INITIATION_SIZE",
    "MIN_DATA_SIZE",
    "RESPONSE_SIZE",
    "MalformedMessage",
    "Message",
    "MsgType",
    "mac1_key",
    "mac1_valid",
    "parse",
]

INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
MIN_DATA_SIZE = 32
_MAC1_OFFSET = {1: 116, 2: 60}
_LABEL_MAC1 = b"mac1----"


class MsgType(IntEnum):
    INITIATION = 1
    RESPONSE = 2
    COOKIE_REPLY = 3
    DATA = 4


class MalformedMessage(ValueError):
    """Not a WireGuard message (unknown type, reserved bytes set, wrong size)."""


@dataclass(frozen=True, slots=True)
class Message:
    type: MsgType
    sender: int | None  # types 1, 2
    receiver: int | None  # types 2, 3, 4


def parse(datagram: bytes) -> Message:
    """Reads type and indices; raises :class:`MalformedMessage` for anything else."""
    n = len(datagram)
    if n < 4 or datagram[1:4] != b"\x00\x00\x00":
        raise MalformedMessage("shorter than a header or reserved bytes set")
    kind = datagram[0]
    if kind == 1:
        if n != INITIATION_SIZE:
            raise MalformedMessage(f"initiation of {n} bytes (expected {INITIATION_SIZE})")
        return Message(MsgType.INITIATION, int.from_bytes(datagram[4:8], "little"), None)
    if kind == 2:
        if n != RESPONSE_SIZE:
            raise MalformedMessage(f"response of {n} bytes (expected {RESPONSE_SIZE})")
        return Message(
            MsgType.RESPONSE,
            int.from_bytes(datagram[4:8], "little"),
            int.from_bytes(datagram[8:12], "little"),
        )
    if kind == 3:
        if n != COOKIE_REPLY_SIZE:
            raise MalformedMessage(f"cookie reply of {n} bytes (expected {COOKIE_REPLY_SIZE})")
        return Message(MsgType.COOKIE_REPLY, None, int.from_bytes(datagram[4:8], "little"))
    if kind == 4:
        if n < MIN_DATA_SIZE:
            raise MalformedMessage(f"data of {n} bytes (at least {MIN_DATA_SIZE})")
        return Message(MsgType.DATA, None, int.from_bytes(datagram[4:8], "little"))
    raise MalformedMessage(f"unknown message type 0x{kind:02x}")


def mac1_key(public_key: bytes) -> bytes:
    """HASH("mac1----" || the recipient's 32-byte static public key)."""
    if len(public_key) != 32:
        raise ValueError("a WireGuard public key is 32 bytes")
    return hashlib.blake2s(_LABEL_MAC1 + public_key).digest()


def mac1_valid(datagram: bytes, key: bytes) -> bool:
    """Whether an initiation's or response's mac1 was made for the holder of ``key``'s pubkey."""
    offset = _MAC1_OFFSET.get(datagram[0]) if datagram else None
    if offset is None or len(datagram) < offset + 16:
        return False
    mac = hashlib.blake2s(datagram[:offset], digest_size=16, key=key).digest()
    return hmac.compare_digest(mac, datagram[offset : offset + 16])
