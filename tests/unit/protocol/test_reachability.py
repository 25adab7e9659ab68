"""The reachability probe datagram (docs/protocol.md §2.9)."""

from __future__ import annotations

import struct

import pytest

from higgs.protocol.reachability import MAGIC, PROBE_LEN, ProbeError, decode_probe, encode_probe

NONCE = bytes(range(16))
PROBE = bytes.fromhex("4847 5052 4f42 4531 000102030405060708090a0b0c0d0e0f")


def test_probe_is_byte_exact_and_round_trips() -> None:
    assert encode_probe(NONCE) == PROBE
    assert len(PROBE) == PROBE_LEN == 24
    assert decode_probe(PROBE) == NONCE


def test_wireguard_ignores_it() -> None:
    # WireGuard reads the first 4 bytes as a little-endian message type 1..4.
    (message_type,) = struct.unpack("<I", PROBE[:4])
    assert message_type not in (1, 2, 3, 4)


@pytest.mark.parametrize(
    ("data", "reason"),
    [(PROBE[:-1], "bad_length"), (PROBE + b"\0", "bad_length"),
     (b"HGPROBE2" + NONCE, "bad_magic"), (bytes(24), "bad_magic")],
)  # fmt: skip
def test_anything_else_is_not_a_probe(data: bytes, reason: str) -> None:
    with pytest.raises(ProbeError) as info:
        decode_probe(data)
    assert info.value.reason == reason


def test_the_docs_show_the_same_bytes() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[3] / "docs" / "protocol.md").read_text()
    assert MAGIC.decode() in doc
    assert "48 47 50 52 4f 42 45 31" in doc
