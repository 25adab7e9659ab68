"""NAT-PMP and PCP over UDP to gateway:5351: thin adapters around the pure codecs in
``higgs.protocol.natpmp`` / ``higgs.protocol.pcp``.

A connected UDP socket only hears the gateway's port 5351 (RFC 6886 §3.1: replies from
elsewhere are ignored). Retries follow RFC 6886 §3.1 (250 ms, doubling) but stop after
``RETRIES_S`` — a node must not spend a minute on a router that does not answer.
The blocking variants serve the journal's undo, which runs outside any event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from higgs.osnet.portmap.types import Method, PortMapError, PortMapping
from higgs.protocol import natpmp, pcp

__all__ = [
    "RETRIES_S",
    "natpmp_delete_blocking",
    "natpmp_map",
    "pcp_delete_blocking",
    "pcp_map",
    "pcp_new_nonce",
]

RETRIES_S = (0.25, 0.5, 1.0)
"""Wait after each send: three tries, 1.75 s per method at most."""
PORT = 5351
T = TypeVar("T")


class _Proto(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | Exception] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        self.queue.put_nowait(exc)


async def _exchange(
    method: Method,
    gateway: str,
    payload: bytes,
    decode: Callable[[bytes], T | None],
    *,
    port: int = PORT,
    retries: tuple[float, ...] = RETRIES_S,
) -> T:
    """Sends ``payload`` until ``decode`` accepts a reply (returns not None) or the tries run
    out. ``decode`` raises ValueError for a malformed reply: it is skipped, and named in the
    error if nothing better arrives."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in gateway else socket.AF_INET
    transport, proto = await loop.create_datagram_endpoint(
        _Proto, remote_addr=(gateway, port), family=family
    )
    bad: str | None = None
    refused = False
    try:
        for wait in retries:
            transport.sendto(payload)
            deadline = loop.time() + wait
            while (left := deadline - loop.time()) > 0:
                try:
                    item = await asyncio.wait_for(proto.queue.get(), left)
                except TimeoutError:
                    break
                if isinstance(item, ConnectionRefusedError):
                    refused = True  # ICMP port unreachable: nothing listens on 5351
                    continue
                if isinstance(item, Exception):
                    continue
                try:
                    answer = decode(item)
                except ValueError as exc:
                    bad = str(exc)
                    continue
                if answer is not None:
                    return answer
            if refused:
                break
    finally:
        transport.close()
    if bad is not None:
        raise PortMapError(method, "bad_reply", f"{gateway}:{port} sent a reply we refuse: {bad}")
    if refused:
        raise PortMapError(method, "port_unreachable", f"nothing listens on {gateway}:{port}")
    total = sum(retries)
    raise PortMapError(method, "no_answer", f"no answer from {gateway}:{port} within {total:g} s")


# --- NAT-PMP --------------------------------------------------------------------------------


async def natpmp_map(
    gateway: str, internal_ip: str, internal_port: int, lifetime_s: int, *, port: int = PORT
) -> PortMapping:
    m = Method.NATPMP

    def external(data: bytes) -> natpmp.ExternalAddressResponse | None:
        reply = natpmp.decode(data)
        return reply if isinstance(reply, natpmp.ExternalAddressResponse) else None

    addr = await _exchange(
        m, gateway, natpmp.encode_external_address_request(), external, port=port
    )
    if addr.result != natpmp.Result.SUCCESS:
        raise PortMapError(m, "refused", f"external address: {natpmp.result_text(addr.result)}")

    def mapped(data: bytes) -> natpmp.MapResponse | None:
        reply = natpmp.decode(data)
        if not isinstance(reply, natpmp.MapResponse) or reply.op != natpmp.OP_MAP_UDP:
            return None
        if reply.result != natpmp.Result.SUCCESS or reply.internal_port == internal_port:
            return reply
        return None

    request = natpmp.encode_map_request(internal_port, internal_port, lifetime_s)
    reply = await _exchange(m, gateway, request, mapped, port=port)
    if reply.result != natpmp.Result.SUCCESS:
        raise PortMapError(m, "refused", f"mapping: {natpmp.result_text(reply.result)}")
    if reply.lifetime_s == 0 or reply.external_port == 0:
        raise PortMapError(m, "refused", "the router granted a mapping with no port or lifetime")
    if addr.address.is_unspecified:
        raise PortMapError(m, "no_external_address", "the router has no external address (0.0.0.0)")
    return PortMapping(
        m, gateway, internal_ip, internal_port, str(addr.address), reply.external_port,
        reply.lifetime_s, time.monotonic(),
    )  # fmt: skip


def natpmp_delete_blocking(gateway: str, internal_port: int, *, port: int = PORT) -> bool:
    """Deletes our UDP mapping of ``internal_port``; True when the router confirmed it."""
    request = natpmp.encode_map_request(internal_port, 0, 0)

    def ok(data: bytes) -> bool:
        reply = natpmp.decode(data)
        return isinstance(reply, natpmp.MapResponse) and reply.op == natpmp.OP_MAP_UDP

    return _blocking_exchange(gateway, port, request, ok)


# --- PCP ------------------------------------------------------------------------------------


def pcp_new_nonce() -> bytes:
    return os.urandom(pcp.NONCE_LEN)


async def pcp_map(
    gateway: str,
    internal_ip: str,
    internal_port: int,
    lifetime_s: int,
    nonce: bytes,
    *,
    port: int = PORT,
) -> PortMapping:
    m = Method.PCP
    req = pcp.MapRequest(
        nonce=nonce,
        client=ipaddress.ip_address(internal_ip),
        internal_port=internal_port,
        lifetime_s=lifetime_s,
        external_port=internal_port,
    )

    def answer(data: bytes) -> pcp.MapResponse | None:
        reply = pcp.decode_response(data)
        if reply.result != pcp.Result.SUCCESS or pcp.matches(req, reply):
            return reply
        return None  # another request's answer: not ours

    try:
        reply = await _exchange(m, gateway, pcp.encode_map_request(req), answer, port=port)
    except PortMapError as exc:
        if "natpmp_reply" in exc.detail:
            raise PortMapError(m, "unsupported", "the router speaks NAT-PMP, not PCP") from None
        raise
    if reply.result != pcp.Result.SUCCESS:
        raise PortMapError(m, "refused", pcp.result_text(reply.result))
    if reply.lifetime_s == 0 or reply.external_port == 0 or reply.external_ip.is_unspecified:
        raise PortMapError(m, "refused", "the router granted a mapping with no address or port")
    return PortMapping(
        m, gateway, internal_ip, internal_port, str(reply.external_ip), reply.external_port,
        reply.lifetime_s, time.monotonic(), nonce=nonce.hex(),
    )  # fmt: skip


def pcp_delete_blocking(
    gateway: str, internal_ip: str, internal_port: int, nonce: bytes, *, port: int = PORT
) -> bool:
    """Deletes the mapping ``nonce`` created (lifetime 0); True when the router confirmed."""
    req = pcp.MapRequest(
        nonce=nonce,
        client=ipaddress.ip_address(internal_ip),
        internal_port=internal_port,
        lifetime_s=0,
    )

    def ok(data: bytes) -> bool:
        reply = pcp.decode_response(data)
        return reply.result != pcp.Result.SUCCESS or pcp.matches(req, reply)

    return _blocking_exchange(gateway, port, pcp.encode_map_request(req), ok)


def _blocking_exchange(
    gateway: str, port: int, payload: bytes, ok: Callable[[bytes], bool]
) -> bool:
    family = socket.AF_INET6 if ":" in gateway else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((gateway, port))
        except OSError:
            return False  # no route to the gateway any more
        for wait in RETRIES_S:
            try:
                sock.send(payload)
            except OSError:
                return False
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(2048)
                except TimeoutError:
                    break
                except OSError:
                    return False  # port unreachable: no server, so no mapping either
                try:
                    if ok(data):
                        return True
                except ValueError:
                    continue
    return False
