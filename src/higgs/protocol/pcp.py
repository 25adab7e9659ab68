"""PCP MAP (RFC 6887): asking a home router for a port mapping — pure codec, no I/O.

Why in-tree: no maintained Python PCP client exists (``pcp`` on PyPI is Performance
Co-Pilot); a MAP request is one 60-byte message.

All integers are big-endian; addresses are 16 bytes (IPv4 as ``::ffff:a.b.c.d``). The client
sends to the gateway's UDP port 5351 (the NAT-PMP port: RFC 6887 §19.1).

Request (60 bytes: 24-byte header + 36-byte MAP data)::

    version=2 | R=0,opcode=1 (MAP) | reserved (u16) | requested lifetime (u32) |
    client IP address (16)
    mapping nonce (12) | protocol (u8, 17 = UDP) | reserved (3) | internal port (u16) |
    suggested external port (u16) | suggested external IP address (16)

Response (60 bytes, then options)::

    version=2 | R=1,opcode=1 | reserved (u8) | result code (u8) | lifetime (u32) |
    epoch time (u32) | reserved (12)
    mapping nonce (12) | protocol | reserved (3) | internal port | assigned external port |
    assigned external IP address (16)
    options: code (u8) | reserved (u8) | length (u16) | data, padded to 4 bytes — skipped

A request with lifetime 0 and the nonce that created the mapping deletes it (a different nonce
is refused with NOT_AUTHORIZED: the undo journals the nonce). A router that speaks only
NAT-PMP answers version 2 with a NAT-PMP "unsupported version" reply (version 0);
:func:`decode_response` names that case.

Limits (security): replies longer than 1100 bytes (RFC 6887 §7) or with options running past
the end are refused; a reply must carry the request's nonce, protocol and internal port
(checked by :func:`matches`).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "MAX_MESSAGE",
    "OP_MAP",
    "PCP_PORT",
    "PROTO_UDP",
    "VERSION",
    "MapRequest",
    "MapResponse",
    "PcpError",
    "Result",
    "decode_response",
    "encode_map_request",
    "matches",
    "result_text",
]

PCP_PORT = 5351
VERSION = 2
OP_MAP = 1
PROTO_UDP = 17
MAX_MESSAGE = 1100
NONCE_LEN = 12
_RESPONSE_BIT = 0x80

_HEADER_REQ = struct.Struct("!BBHI16s")  # 24
_HEADER_RESP = struct.Struct("!BBBBII12s")  # 24
_MAP = struct.Struct("!12sB3sHH16s")  # 36
HEADER_LEN = 24
MAP_LEN = 36


class Result(enum.IntEnum):
    SUCCESS = 0
    UNSUPP_VERSION = 1
    NOT_AUTHORIZED = 2
    MALFORMED_REQUEST = 3
    UNSUPP_OPCODE = 4
    UNSUPP_OPTION = 5
    MALFORMED_OPTION = 6
    NETWORK_FAILURE = 7
    NO_RESOURCES = 8
    UNSUPP_PROTOCOL = 9
    USER_EX_QUOTA = 10
    CANNOT_PROVIDE_EXTERNAL = 11
    ADDRESS_MISMATCH = 12
    EXCESSIVE_REMOTE_PEERS = 13


class PcpError(ValueError):
    """A reply that cannot be used; ``reason`` is a short stable name, ``detail`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _addr16(addr: IPAddress) -> bytes:
    if isinstance(addr, ipaddress.IPv4Address):
        return b"\x00" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


def _addr_from16(raw: bytes) -> IPAddress:
    v6 = ipaddress.IPv6Address(raw)
    return v6.ipv4_mapped or v6


@dataclass(frozen=True)
class MapRequest:
    nonce: bytes
    client: IPAddress
    internal_port: int
    lifetime_s: int
    external_port: int = 0  # a suggestion; 0: any
    external_ip: IPAddress | None = None  # a suggestion; None: any of the client's family
    protocol: int = PROTO_UDP


@dataclass(frozen=True)
class MapResponse:
    result: int
    lifetime_s: int
    epoch: int
    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int
    external_ip: IPAddress


def encode_map_request(req: MapRequest) -> bytes:
    if len(req.nonce) != NONCE_LEN:
        raise ValueError(f"the nonce must be {NONCE_LEN} bytes")
    if not 1 <= req.internal_port <= 0xFFFF or not 0 <= req.external_port <= 0xFFFF:
        raise ValueError(f"bad port {req.internal_port} -> {req.external_port}")
    if not 0 <= req.lifetime_s <= 0xFFFFFFFF:
        raise ValueError(f"bad lifetime {req.lifetime_s}")
    suggested = req.external_ip
    if suggested is None:
        # "all zeros" of the client's family: ::ffff:0.0.0.0 for IPv4, :: for IPv6.
        suggested = (
            ipaddress.IPv4Address(0)
            if isinstance(req.client, ipaddress.IPv4Address)
            else ipaddress.IPv6Address(0)
        )
    header = _HEADER_REQ.pack(VERSION, OP_MAP, 0, req.lifetime_s, _addr16(req.client))
    body = _MAP.pack(
        req.nonce, req.protocol, b"\0\0\0", req.internal_port, req.external_port, _addr16(suggested)
    )
    return header + body


def decode_response(data: bytes) -> MapResponse:
    """Decodes a MAP response; raises :class:`PcpError` for anything malformed. A non-zero
    result code is returned, not raised (an error reply may carry no MAP data: then the
    MAP fields are zero)."""
    if len(data) > MAX_MESSAGE:
        raise PcpError("too_long", f"{len(data)} bytes, at most {MAX_MESSAGE}")
    if len(data) < 4:
        raise PcpError("short", f"{len(data)} bytes, a reply has at least {HEADER_LEN}")
    if data[0] == 0:
        raise PcpError("natpmp_reply", "the router answered with NAT-PMP (version 0)")
    if data[0] != VERSION:
        raise PcpError("bad_version", f"version {data[0]}")
    if len(data) < HEADER_LEN:
        raise PcpError("short", f"{len(data)} bytes, a reply has at least {HEADER_LEN}")
    if len(data) % 4:
        raise PcpError("bad_length", f"{len(data)} bytes is not a multiple of 4")
    _, op, _, result, lifetime, epoch, _ = _HEADER_RESP.unpack_from(data)
    if not op & _RESPONSE_BIT:
        raise PcpError("not_response", "the R bit is clear")
    if op & 0x7F != OP_MAP:
        raise PcpError("unknown_opcode", f"opcode {op & 0x7F}")
    if len(data) < HEADER_LEN + MAP_LEN:
        if result == Result.SUCCESS:
            raise PcpError("short", f"{len(data)} bytes, a MAP reply has {HEADER_LEN + MAP_LEN}")
        return MapResponse(result, lifetime, epoch, b"", 0, 0, 0, ipaddress.IPv4Address(0))
    nonce, proto, _, iport, eport, eaddr = _MAP.unpack_from(data, HEADER_LEN)
    _check_options(data, HEADER_LEN + MAP_LEN)
    return MapResponse(result, lifetime, epoch, nonce, proto, iport, eport, _addr_from16(eaddr))


def _check_options(data: bytes, offset: int) -> None:
    while offset < len(data):
        if offset + 4 > len(data):
            raise PcpError("bad_option", f"option header cut at byte {offset}")
        (length,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + length + (-length % 4)
        if offset > len(data):
            raise PcpError("bad_option", "an option runs past the end of the reply")


def matches(req: MapRequest, resp: MapResponse) -> bool:
    """Is ``resp`` the answer to ``req`` (RFC 6887 §11.4: nonce, protocol, internal port)?"""
    return (
        resp.nonce == req.nonce
        and resp.protocol == req.protocol
        and resp.internal_port == req.internal_port
    )


def result_text(code: int) -> str:
    try:
        return Result(code).name.lower()
    except ValueError:
        return f"result {code}"
