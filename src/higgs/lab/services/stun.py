"""A STUN binding responder (RFC 5389) for the lab's internet host.

miniupnpd on a lab router learns its public address by STUN (its WAN address is in a
documentation range, which it otherwise refuses: research/datapath.md, lab notes). Only
binding requests are answered, with MAPPED-ADDRESS and XOR-MAPPED-ADDRESS of the source;
anything else is dropped. Never reachable from outside the lab (it binds a lab address).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
from typing import cast

__all__ = ["binding_response", "main"]

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
ATTR_MAPPED_ADDRESS = 0x0001
ATTR_XOR_MAPPED_ADDRESS = 0x0020


def binding_response(request: bytes, addr: tuple[str, int]) -> bytes | None:
    """The answer to a binding request from ``addr`` (IPv4), or None for anything else."""
    if len(request) < 20:
        return None
    msg_type, length, cookie = struct.unpack("!HHI", request[:8])
    if msg_type != BINDING_REQUEST or len(request) != 20 + length:
        return None
    txid = request[8:20]
    ip = socket.inet_aton(addr[0])
    port = addr[1]
    mapped = struct.pack("!BBH4s", 0, 1, port, ip)
    xor_ip = bytes(b ^ c for b, c in zip(ip, struct.pack("!I", MAGIC_COOKIE), strict=True))
    xored = struct.pack("!BBH4s", 0, 1, port ^ (MAGIC_COOKIE >> 16), xor_ip)
    attrs = struct.pack("!HH", ATTR_MAPPED_ADDRESS, len(mapped)) + mapped
    if cookie == MAGIC_COOKIE:  # RFC 3489 clients do not know XOR-MAPPED-ADDRESS
        attrs += struct.pack("!HH", ATTR_XOR_MAPPED_ADDRESS, len(xored)) + xored
    return struct.pack("!HHI", BINDING_SUCCESS, len(attrs), cookie) + txid + attrs


class _Responder(asyncio.DatagramProtocol):
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        answer = binding_response(data, (str(addr[0]), int(addr[1])))
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)
            print(f"binding from {addr[0]}:{addr[1]}", flush=True)


async def _serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(_Responder, local_addr=(host, port))
    print(f"stun on {host}:{port}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=3478)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
