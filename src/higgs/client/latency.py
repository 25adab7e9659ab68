"""Round-trip time to the node through the tunnel: one ICMP echo to its tunnel address.

Hand-written (a dozen lines) rather than a dependency: we need one echo with a timeout on an
asyncio loop, bound to the tunnel interface, and nothing else. Raw ICMP sockets need root (or
CAP_NET_RAW), which the client has anyway; without it the latency is simply unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time

__all__ = ["icmp_rtt_ms"]

_ECHO_REQUEST = 8
_ECHO_REPLY = 0


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo(ident: int, seq: int) -> bytes:
    payload = b"higgsvpn-latency"
    header = struct.pack("!BBHHH", _ECHO_REQUEST, 0, 0, ident, seq)
    csum = _checksum(header + payload)
    return struct.pack("!BBHHH", _ECHO_REQUEST, 0, csum, ident, seq) + payload


async def icmp_rtt_ms(
    target: str, *, wait_s: float = 2.0, device: str | None = None
) -> float | None:
    """Milliseconds for one echo to ``target`` (IPv4), or None (no answer, no permission)."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    except OSError:
        return None
    try:
        sock.setblocking(False)
        if device:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        ident = os.getpid() & 0xFFFF
        seq = int(time.monotonic() * 1000) & 0xFFFF
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        # A plain sendto: uvloop has no loop.sock_sendto, and a raw ICMP socket with room
        # in its buffer never blocks on one echo.
        sock.sendto(_echo(ident, seq), (target, 0))
        deadline = started + wait_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 2048), left)
            except TimeoutError:
                return None
            ihl = (data[0] & 0x0F) * 4
            if len(data) < ihl + 8:
                continue
            kind, _code, _csum, rid, rseq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
            src = socket.inet_ntoa(data[12:16])
            if kind == _ECHO_REPLY and rid == ident and rseq == seq and src == target:
                return (time.monotonic() - started) * 1000
        return None
    except OSError:
        return None
    finally:
        sock.close()
