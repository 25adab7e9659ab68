"""NAT-PMP (RFC 6886): asking a home router for a UDP port mapping — pure codec, no I/O.

Why in-tree: the PyPI packages (``nat-pmp``, ``py-natpmp``) are unmaintained and synchronous;
the protocol is four fixed-size messages.

All integers are big-endian. The client sends to the gateway's UDP port 5351.

External address request (2 bytes)::

    0      1
    +------+------+
    | vers | op=0 |
    +------+------+

External address response (12 bytes)::

    vers=0 | op=128 | result code (u16) | seconds since start of epoch (u32) | external IPv4 (4)

Mapping request (12 bytes; ``op`` 1 = UDP, 2 = TCP)::

    vers=0 | op | reserved=0 (u16) | internal port (u16) | suggested external port (u16) |
    requested lifetime in seconds (u32)

A request with lifetime 0 (and suggested external port 0) deletes the mapping.

Mapping response (16 bytes)::

    vers=0 | op=128+op | result code (u16) | epoch (u32) | internal port (u16) |
    mapped external port (u16) | lifetime in seconds (u32)

Result codes: 0 success, 1 unsupported version, 2 not authorized/refused, 3 network failure,
4 out of resources, 5 unsupported opcode. A router that speaks only PCP answers a version-0
request with a PCP reply (version 2); :func:`decode` names that case.

Limits (security): a reply must be exactly the expected length for its opcode (trailing bytes
are refused, RFC 6886 §3.2 allows none) and come from the gateway the request went to (checked
by the adapter).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "NATPMP_PORT",
    "OP_EXTERNAL_ADDRESS",
    "OP_MAP_TCP",
    "OP_MAP_UDP",
    "VERSION",
    "ExternalAddressResponse",
    "MapResponse",
    "NatPmpError",
    "Result",
    "decode",
    "encode_external_address_request",
    "encode_map_request",
    "result_text",
]

NATPMP_PORT = 5351
VERSION = 0
OP_EXTERNAL_ADDRESS = 0
OP_MAP_UDP = 1
OP_MAP_TCP = 2
_RESPONSE_BIT = 128

_EXTERNAL = struct.Struct("!BBHI4s")  # 12 bytes
_MAP_REQUEST = struct.Struct("!BBHHHI")  # 12 bytes
_MAP_RESPONSE = struct.Struct("!BBHIHHI")  # 16 bytes
MAX_LIFETIME_S = 0xFFFFFFFF


class Result(enum.IntEnum):
    SUCCESS = 0
    UNSUPPORTED_VERSION = 1
    NOT_AUTHORIZED = 2
    NETWORK_FAILURE = 3
    OUT_OF_RESOURCES = 4
    UNSUPPORTED_OPCODE = 5


class NatPmpError(ValueError):
    """A reply that cannot be used; ``reason`` is a short stable name (for counters),
    ``detail`` says what was wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ExternalAddressResponse:
    result: int
    epoch: int
    address: ipaddress.IPv4Address


@dataclass(frozen=True)
class MapResponse:
    op: int  # OP_MAP_UDP or OP_MAP_TCP (the request's opcode)
    result: int
    epoch: int
    internal_port: int
    external_port: int
    lifetime_s: int


def encode_external_address_request() -> bytes:
    return bytes((VERSION, OP_EXTERNAL_ADDRESS))


def encode_map_request(
    internal_port: int, external_port: int, lifetime_s: int, *, op: int = OP_MAP_UDP
) -> bytes:
    """A mapping request; ``lifetime_s=0`` with ``external_port=0`` deletes the mapping."""
    if op not in (OP_MAP_UDP, OP_MAP_TCP):
        raise ValueError(f"bad opcode {op}")
    if not 1 <= internal_port <= 0xFFFF or not 0 <= external_port <= 0xFFFF:
        raise ValueError(f"bad port {internal_port} -> {external_port}")
    if not 0 <= lifetime_s <= MAX_LIFETIME_S:
        raise ValueError(f"bad lifetime {lifetime_s}")
    return _MAP_REQUEST.pack(VERSION, op, 0, internal_port, external_port, lifetime_s)


def decode(data: bytes) -> ExternalAddressResponse | MapResponse:
    """Decodes a reply; raises :class:`NatPmpError` for anything that is not a well-formed
    NAT-PMP response. A non-zero result code is returned (the caller decides), not raised."""
    if len(data) < 4:
        raise NatPmpError("short", f"{len(data)} bytes, a reply has at least 4")
    version, op = data[0], data[1]
    if version == 2:
        raise NatPmpError("pcp_reply", "the router answered with PCP (version 2)")
    if version != VERSION:
        raise NatPmpError("bad_version", f"version {version}")
    if not op & _RESPONSE_BIT:
        raise NatPmpError("not_response", f"opcode {op} is a request")
    request_op = op - _RESPONSE_BIT
    if request_op == OP_EXTERNAL_ADDRESS:
        if len(data) != _EXTERNAL.size:
            raise NatPmpError("bad_length", f"{len(data)} bytes, expected {_EXTERNAL.size}")
        _, _, result, epoch, addr = _EXTERNAL.unpack(data)
        return ExternalAddressResponse(result, epoch, ipaddress.IPv4Address(addr))
    if request_op in (OP_MAP_UDP, OP_MAP_TCP):
        if len(data) != _MAP_RESPONSE.size:
            # Error replies for an unsupported version or opcode may be only 8 bytes long.
            if len(data) == 8:
                result, epoch = struct.unpack("!HI", data[2:8])
                if result != Result.SUCCESS:
                    return MapResponse(request_op, result, epoch, 0, 0, 0)
            raise NatPmpError("bad_length", f"{len(data)} bytes, expected {_MAP_RESPONSE.size}")
        _, _, result, epoch, iport, eport, lifetime = _MAP_RESPONSE.unpack(data)
        return MapResponse(request_op, result, epoch, iport, eport, lifetime)
    raise NatPmpError("unknown_opcode", f"response opcode {op}")


def result_text(code: int) -> str:
    try:
        return Result(code).name.lower()
    except ValueError:
        return f"result {code}"
