"""A tiny real DNS server (dnspython + asyncio) that tests start on loopback as an upstream.

Modes: ``answer`` (an A record for any name, plus big TXT records for names under ``big.``),
``timeout`` (never answers), ``truncate`` (always TC over UDP; full answers over TCP),
``servfail``. It records which transport each query came in on.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass, field
from typing import cast

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["UpstreamServer"]

ANSWER_A = "192.0.2.53"


@dataclass
class UpstreamServer:
    host: str
    mode: str = "answer"
    delay_s: float = 0.0
    port: int = 0
    seen: list[tuple[str, str]] = field(default_factory=list)  # (transport, qname)
    _udp: asyncio.DatagramTransport | None = None
    _tcp: asyncio.Server | None = None
    _tasks: set[asyncio.Future[None]] = field(default_factory=set)

    def answer_for(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        if self.mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        q = query.question[0]
        name = q.name.to_text()
        if name.startswith("big.") or ".big." in name:
            texts = [f'"{"x" * 200}{i}"' for i in range(10)]
            response.answer.append(dns.rrset.from_text(q.name, 60, "IN", "TXT", *texts))
        else:
            response.answer.append(dns.rrset.from_text(q.name, 60, "IN", "A", ANSWER_A))
        return response

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        server = self

        class Proto(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                server._udp = cast(asyncio.DatagramTransport, transport)

            def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
                task = asyncio.ensure_future(server._udp_reply(data, addr))
                server._tasks.add(task)
                task.add_done_callback(server._tasks.discard)

        await loop.create_datagram_endpoint(Proto, local_addr=(self.host, self.port))
        assert self._udp is not None
        self.port = int(self._udp.get_extra_info("sockname")[1])
        self._tcp = await asyncio.start_server(self._on_tcp, self.host, self.port)

    async def _udp_reply(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        query = dns.message.from_wire(data)
        self.seen.append(("udp", query.question[0].name.to_text()))
        if self.mode == "timeout":
            return
        await asyncio.sleep(self.delay_s)
        if self.mode == "truncate":
            response = dns.message.make_response(query)
            response.flags |= dns.flags.TC
        else:
            response = self.answer_for(query)
        assert self._udp is not None
        self._udp.sendto(response.to_wire(), addr)

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                query = dns.message.from_wire(await reader.readexactly(length))
                self.seen.append(("tcp", query.question[0].name.to_text()))
                if self.mode == "timeout":
                    await asyncio.sleep(3600)
                await asyncio.sleep(self.delay_s)
                wire = self.answer_for(query).to_wire()
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 1)
