"""NAT-PMP codec (RFC 6886): byte-exact vectors, result codes, malformed replies refused."""

from __future__ import annotations

import ipaddress

import pytest

from higgs.protocol import natpmp

# Labelled vectors (RFC 6886 §3.2-3.3 layouts, values chosen here).
EXTERNAL_REQUEST = bytes.fromhex("0000")
EXTERNAL_RESPONSE = bytes.fromhex("0080 0000 0000002a cb00710a")  # epoch 42, 203.0.113.10
MAP_REQUEST_UDP = bytes.fromhex("0001 0000 ca6c ca6c 00000e10")  # 51820 -> 51820, 3600 s
MAP_RESPONSE_UDP = bytes.fromhex("0081 0000 0000002a ca6c ca6d 00000708")  # ext 51821, 1800 s
DELETE_REQUEST = bytes.fromhex("0001 0000 ca6c 0000 00000000")


def test_requests_are_byte_exact() -> None:
    assert natpmp.encode_external_address_request() == EXTERNAL_REQUEST
    assert natpmp.encode_map_request(51820, 51820, 3600) == MAP_REQUEST_UDP
    assert natpmp.encode_map_request(51820, 0, 0) == DELETE_REQUEST
    tcp = natpmp.encode_map_request(80, 8080, 60, op=natpmp.OP_MAP_TCP)
    assert tcp == bytes.fromhex("0002 0000 0050 1f90 0000003c")


def test_external_address_response() -> None:
    reply = natpmp.decode(EXTERNAL_RESPONSE)
    assert reply == natpmp.ExternalAddressResponse(0, 42, ipaddress.IPv4Address("203.0.113.10"))


def test_map_response() -> None:
    reply = natpmp.decode(MAP_RESPONSE_UDP)
    assert reply == natpmp.MapResponse(natpmp.OP_MAP_UDP, 0, 42, 51820, 51821, 1800)


@pytest.mark.parametrize(
    ("code", "name"),
    [(1, "unsupported_version"), (2, "not_authorized"), (3, "network_failure"),
     (4, "out_of_resources"), (5, "unsupported_opcode"), (9, "result 9")],
)  # fmt: skip
def test_result_codes_are_returned_and_named(code: int, name: str) -> None:
    data = bytearray(MAP_RESPONSE_UDP)
    data[2:4] = code.to_bytes(2, "big")
    reply = natpmp.decode(bytes(data))
    assert isinstance(reply, natpmp.MapResponse)
    assert reply.result == code
    assert natpmp.result_text(code) == name


def test_short_error_reply_is_accepted_with_its_code() -> None:
    # Some routers answer an unsupported request with just the 8-byte header.
    reply = natpmp.decode(bytes.fromhex("0081 0005 00000001"))
    assert isinstance(reply, natpmp.MapResponse)
    assert reply.result == natpmp.Result.UNSUPPORTED_OPCODE


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "short"),
        (bytes.fromhex("0080"), "short"),
        (bytes.fromhex("0180 0000 0000002a cb00710a"), "bad_version"),
        (bytes.fromhex("0280 0000 0000002a cb00710a"), "pcp_reply"),
        (bytes.fromhex("0000 0000 0000002a cb00710a"), "not_response"),
        (EXTERNAL_RESPONSE + b"\0", "bad_length"),
        (MAP_RESPONSE_UDP[:15], "bad_length"),
        (bytes.fromhex("0081 0000 0000002a"), "bad_length"),  # success needs the full reply
        (bytes.fromhex("0085 0000 0000002a cb00710a"), "unknown_opcode"),
    ],
)
def test_malformed_replies_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(natpmp.NatPmpError) as info:
        natpmp.decode(data)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((0, 1, 1), {}), ((1, 70000, 1), {}), ((1, 1, -1), {}), ((1, 1, 1), {"op": 3})],
)
def test_bad_requests_are_refused(args: tuple[int, int, int], kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="bad "):
        natpmp.encode_map_request(*args, **kwargs)
