"""The relay RTT probe (docs/protocol.md §5.5): one UDP datagram to a relay host's probe
port, echoed back. Nodes and clients time it to choose the relay of a session (issue 14).

Request ``MAGIC | 0x01 | nonce(8)``, answer ``MAGIC | 0x02 | nonce(8)`` (13 bytes each). The
relay answers only well-formed requests, from the probe port, to the sender's address: an
answer is never larger than its request, so the probe cannot amplify a spoofed sender's
traffic. Anything else is dropped and counted (``probe_malformed``).
"""

from __future__ import annotations

import struct

__all__ = [
    "DEFAULT_PROBE_PORT",
    "MAGIC",
    "PROBE_SIZE",
    "T_PING",
    "T_PONG",
    "answer_to",
    "ping",
    "pong_nonce",
]

MAGIC = b"HGRP"
T_PING = 0x01
T_PONG = 0x02
PROBE_SIZE = 13
# Beside the leased ports (40000-49999 by default), never one of them.
DEFAULT_PROBE_PORT = 39999

_FORMAT = struct.Struct("!4sB8s")


def ping(nonce: bytes) -> bytes:
    if len(nonce) != 8:
        raise ValueError("a probe nonce is 8 bytes")
    return _FORMAT.pack(MAGIC, T_PING, nonce)


def answer_to(datagram: bytes) -> bytes | None:
    """The relay's answer to ``datagram``, or None when it is not a probe request."""
    if len(datagram) != PROBE_SIZE:
        return None
    magic, kind, nonce = _FORMAT.unpack(datagram)
    if magic != MAGIC or kind != T_PING:
        return None
    return _FORMAT.pack(MAGIC, T_PONG, nonce)


def pong_nonce(datagram: bytes) -> bytes | None:
    """The nonce of a relay's answer, or None when ``datagram`` is not one."""
    if len(datagram) != PROBE_SIZE:
        return None
    magic, kind, nonce = _FORMAT.unpack(datagram)
    return nonce if magic == MAGIC and kind == T_PONG else None
