from __future__ import annotations

import pytest

from higgs.relay import wgmsg
from higgs.relay.wgmsg import MalformedMessage, MsgType

from . import vectors as v


def test_a_captured_wireguard_go_initiation_parses_and_its_mac1_verifies() -> None:
    assert len(v.INITIATION) == wgmsg.INITIATION_SIZE
    msg = wgmsg.parse(v.INITIATION)
    assert msg == wgmsg.Message(MsgType.INITIATION, v.INITIATION_SENDER, None)
    assert v.INITIATION[116:132].hex() == v.INITIATION_MAC1
    assert wgmsg.mac1_valid(v.INITIATION, wgmsg.mac1_key(v.RECIPIENT_PUB))


def test_mac1_fails_for_another_key_and_for_any_flipped_byte() -> None:
    key = wgmsg.mac1_key(v.RECIPIENT_PUB)
    assert not wgmsg.mac1_valid(v.INITIATION, wgmsg.mac1_key(v.NODE_PUB))
    for offset in (0, 4, 8, 115, 116, 131):
        flipped = bytearray(v.INITIATION)
        flipped[offset] ^= 0x01
        assert not wgmsg.mac1_valid(bytes(flipped), key), offset
    # mac2 is outside mac1's coverage
    tail = bytearray(v.INITIATION)
    tail[140] ^= 0xFF
    assert wgmsg.mac1_valid(bytes(tail), key)


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (
            v.response(0x01020304, 0xA0B0C0D0, v.NODE_PUB),
            (MsgType.RESPONSE, 0x01020304, 0xA0B0C0D0),
        ),
        (v.cookie(0xDEADBEEF), (MsgType.COOKIE_REPLY, None, 0xDEADBEEF)),
        (v.data(0x00000007), (MsgType.DATA, None, 7)),
        (v.data(0x7, payload=1400), (MsgType.DATA, None, 7)),
    ],
)
def test_indices_are_little_endian_at_their_offsets(
    wire: bytes, expected: tuple[MsgType, int | None, int | None]
) -> None:
    msg = wgmsg.parse(wire)
    assert (msg.type, msg.sender, msg.receiver) == expected


def test_response_vector_bytes() -> None:
    wire = v.response(0x01020304, 0xA0B0C0D0, v.NODE_PUB)
    assert wire[:12].hex(" ") == "02 00 00 00 04 03 02 01 d0 c0 b0 a0"
    assert len(wire) == wgmsg.RESPONSE_SIZE
    assert wgmsg.mac1_valid(wire, wgmsg.mac1_key(v.NODE_PUB))
    assert not wgmsg.mac1_valid(wire, wgmsg.mac1_key(v.CLIENT_PUB))


@pytest.mark.parametrize(
    ("wire", "words"),
    [
        (b"", "shorter"),
        (b"\x04\0\0", "shorter"),
        (b"\x04\x01\0\0" + bytes(28), "reserved"),
        (v.INITIATION[:-1], "initiation of 147"),
        (v.INITIATION + b"\0", "initiation of 149"),
        (v.response(1, 2, v.NODE_PUB)[:91], "response of 91"),
        (v.cookie(1) + b"\0", "cookie reply of 65"),
        (v.data(1)[:31], "data of 31"),
        (b"\x05\0\0\0" + bytes(40), "0x05"),
        (b"\x00\0\0\0" + bytes(40), "0x00"),
    ],
)
def test_non_wireguard_datagrams_are_rejected_with_a_reason(wire: bytes, words: str) -> None:
    with pytest.raises(MalformedMessage, match=words):
        wgmsg.parse(wire)


def test_mac1_of_non_handshake_messages_is_never_valid() -> None:
    key = wgmsg.mac1_key(v.NODE_PUB)
    assert not wgmsg.mac1_valid(v.data(1), key)
    assert not wgmsg.mac1_valid(v.cookie(1), key)
    assert not wgmsg.mac1_valid(b"", key)
    assert not wgmsg.mac1_valid(b"\x01", key)
    with pytest.raises(ValueError, match="32 bytes"):
        wgmsg.mac1_key(b"short")
