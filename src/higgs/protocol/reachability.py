"""The reachability probe: how the server checks that a node's announced port mapping
really leads to the node from outside, although wireguard-go owns the UDP port.

Flow (docs/protocol.md §2.9):

1. The node registers with ``mapped_endpoint`` (what its home router granted).
2. The server draws a 16-byte nonce, stores it with the node, and sends a few probe datagrams
   from its own address to ``mapped_endpoint``.
3. A probe that arrives is delivered to wireguard-go, which drops it (its first four bytes,
   read as a little-endian message type, are no WireGuard type), and, through a read-only raw
   socket with a kernel filter that passes only probes for the WireGuard port, to the agent.
4. The agent posts the nonce to ``POST /v1/nodes/{id}/reachability``; the server compares it
   with the stored one and from then on offers the mapped endpoint as the direct path.

Datagram (24 bytes)::

    0               8                               24
    +---------------+-------------------------------+
    | "HGPROBE1"    | nonce (16 random bytes)       |
    +---------------+-------------------------------+

``HGPROBE1`` doubles as the version: a new layout gets a new magic. Anything else, or a wrong
length, is not a probe (dropped by the kernel filter before it reaches Python).
"""

from __future__ import annotations

__all__ = ["MAGIC", "NONCE_LEN", "PROBE_LEN", "ProbeError", "decode_probe", "encode_probe"]

MAGIC = b"HGPROBE1"
NONCE_LEN = 16
PROBE_LEN = len(MAGIC) + NONCE_LEN


class ProbeError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode_probe(nonce: bytes) -> bytes:
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"the nonce must be {NONCE_LEN} bytes")
    return MAGIC + nonce


def decode_probe(data: bytes) -> bytes:
    """The nonce of a probe datagram's payload; ProbeError for anything else."""
    if len(data) != PROBE_LEN:
        raise ProbeError("bad_length", f"{len(data)} bytes, a probe has {PROBE_LEN}")
    if data[: len(MAGIC)] != MAGIC:
        raise ProbeError("bad_magic", "not a reachability probe")
    return data[len(MAGIC) :]
