"""PCP MAP codec (RFC 6887): byte-exact vectors, result codes, malformed replies refused."""

from __future__ import annotations

import ipaddress

import pytest

from higgs.protocol import pcp

NONCE = bytes.fromhex("0102030405060708090a0b0c")
CLIENT = ipaddress.IPv4Address("192.168.1.10")
V4_MAPPED_CLIENT = "00000000000000000000ffffc0a8010a"
V4_MAPPED_ANY = "00000000000000000000ffff00000000"

REQUEST = bytes.fromhex(
    "02 01 0000 00000e10" + V4_MAPPED_CLIENT  # version 2, MAP, lifetime 3600, client
    + "0102030405060708090a0b0c 11 000000 ca6c ca6c" + V4_MAPPED_ANY  # nonce, UDP, ports
)  # fmt: skip
RESPONSE = bytes.fromhex(
    "02 81 00 00 00000708 0000002a 000000000000000000000000"  # R|MAP, success, 1800 s, epoch
    + "0102030405060708090a0b0c 11 000000 ca6c ca6c" + "00000000000000000000ffffcb00710a"
)  # fmt: skip


def request(**kw: object) -> pcp.MapRequest:
    fields: dict[str, object] = {
        "nonce": NONCE, "client": CLIENT, "internal_port": 51820, "lifetime_s": 3600,
        "external_port": 51820,
    }  # fmt: skip
    fields.update(kw)
    return pcp.MapRequest(**fields)  # type: ignore[arg-type]


def test_request_is_byte_exact() -> None:
    assert len(REQUEST) == 60
    assert pcp.encode_map_request(request()) == REQUEST


def test_ipv6_request_carries_the_address_and_an_all_zero_suggestion() -> None:
    client = ipaddress.IPv6Address("2001:db8:1::10")
    data = pcp.encode_map_request(request(client=client))
    assert data[8:24] == client.packed
    assert data[44:60] == bytes(16)


def test_delete_is_lifetime_zero_with_the_same_nonce() -> None:
    data = pcp.encode_map_request(request(lifetime_s=0, external_port=0))
    assert data[4:8] == bytes(4)
    assert data[24:36] == NONCE


def test_response_decodes_and_matches_its_request() -> None:
    reply = pcp.decode_response(RESPONSE)
    assert reply == pcp.MapResponse(
        result=0, lifetime_s=1800, epoch=42, nonce=NONCE, protocol=17, internal_port=51820,
        external_port=51820, external_ip=ipaddress.IPv4Address("203.0.113.10"),
    )  # fmt: skip
    assert pcp.matches(request(), reply)
    assert not pcp.matches(request(nonce=bytes(12)), reply)
    assert not pcp.matches(request(internal_port=1), reply)


def test_options_are_skipped_by_length() -> None:
    option = bytes.fromhex("12 00 0004 deadbeef")  # code 18, 4 bytes of data
    assert pcp.decode_response(RESPONSE + option).external_port == 51820


@pytest.mark.parametrize(
    ("code", "name"),
    [(2, "not_authorized"), (3, "malformed_request"), (8, "no_resources"),
     (11, "cannot_provide_external"), (12, "address_mismatch"), (99, "result 99")],
)  # fmt: skip
def test_result_codes_are_returned_and_named(code: int, name: str) -> None:
    data = bytearray(RESPONSE)
    data[3] = code
    assert pcp.decode_response(bytes(data)).result == code
    assert pcp.result_text(code) == name


def test_error_reply_without_map_data_is_accepted_with_its_code() -> None:
    reply = pcp.decode_response(RESPONSE[:3] + bytes([2]) + RESPONSE[4:24])
    assert reply.result == pcp.Result.NOT_AUTHORIZED
    assert reply.nonce == b""


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x02", "short"),
        (RESPONSE[:20], "short"),
        (RESPONSE[:48], "short"),  # success needs the MAP data
        (bytes.fromhex("0081 0001 00000000 0000"), "natpmp_reply"),
        (b"\x03" + RESPONSE[1:], "bad_version"),
        (RESPONSE[:1] + b"\x01" + RESPONSE[2:], "not_response"),
        (RESPONSE[:1] + b"\x82" + RESPONSE[2:], "unknown_opcode"),
        (RESPONSE + b"\0\0", "bad_length"),
        (RESPONSE + bytes.fromhex("12 00 0008 deadbeef"), "bad_option"),
        (RESPONSE + bytes(1100), "too_long"),
    ],
)
def test_malformed_replies_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(pcp.PcpError) as info:
        pcp.decode_response(data)
    assert info.value.reason == reason


def test_bad_requests_are_refused() -> None:
    with pytest.raises(ValueError, match="nonce"):
        pcp.encode_map_request(request(nonce=b"short"))
    with pytest.raises(ValueError, match="bad port"):
        pcp.encode_map_request(request(internal_port=0))
