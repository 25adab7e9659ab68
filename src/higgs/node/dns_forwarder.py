"""A small DNS forwarder for the node's clients, listening on the tunnel address only.

Clients get the node's tunnel address as their resolver, and the firewall redirects any DNS a
client sends elsewhere to it, so names never leak around the tunnel. It must never answer the
uplink (that would make the owner's PC an open resolver): the agent binds it to the tunnel
address, which exists only on the WireGuard interface.

Behaviour:

- UDP and TCP (RFC 1035 length-prefixed) listeners on the same address and port.
- Upstreams are tried in order: plain DNS (UDP, retried over TCP when the answer is truncated),
  TCP only, or DNS-over-HTTPS (RFC 8484 POST, via httpx). A timeout, a network error, a broken
  answer, SERVFAIL or REFUSED moves on to the next upstream; when all fail the client gets
  SERVFAIL.
- Bounded concurrency: at most ``max_inflight`` queries are resolved at once; the excess is
  dropped and counted (a client retries; an attacker does not get an amplifier).
- Anything that is not a well-formed query (junk, responses, no question) is dropped and counted.
- UDP answers bigger than the client's advertised size are replaced by an empty answer with the
  TC bit, so the client retries over TCP.

dnspython parses and validates messages and talks plain DNS to the upstreams (ID matching,
source checks); it is not hand-written here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import httpx

from higgs.node.dns_drops import DnsDropReason, reason_for
from higgs.node.settings import Upstream

__all__ = ["DnsForwarder", "ForwarderStats"]

log = logging.getLogger(__name__)

_TCP_IDLE_S = 10.0
_MAX_TCP_CLIENTS = 64
_MIN_UDP_SIZE = 512
_DNS_MESSAGE = "application/dns-message"


@dataclass
class ForwarderStats:
    """Counters, by name. ``upstream`` counts outcomes per upstream label; ``drops`` counts
    the queries in ``dropped_malformed`` by reason."""

    counters: Counter[str]
    upstream: dict[str, Counter[str]]
    drops: Counter[DnsDropReason] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            **dict(self.counters),
            "drops": {k.value: v for k, v in self.drops.items()},
            "upstreams": {k: dict(v) for k, v in self.upstream.items()},
        }


class _UpstreamFailed(Exception):
    pass


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, forwarder: DnsForwarder) -> None:
        self._forwarder = forwarder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector transport does not subclass DatagramTransport; it quacks like one.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._forwarder._on_udp(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for a client that went away; nothing to do but count.
        self._forwarder._count("udp_send_error")


class DnsForwarder:
    def __init__(
        self,
        host: str,
        port: int,
        upstreams: Sequence[Upstream],
        *,
        timeout_s: float = 2.0,
        max_inflight: int = 256,
    ) -> None:
        if not upstreams:
            raise ValueError("the DNS forwarder needs at least one upstream")
        self.host = host
        self._port = port
        self.upstreams = list(upstreams)
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_inflight)
        self._stats = ForwarderStats(Counter(), {u.label(): Counter() for u in self.upstreams})
        self._udp: _UdpProtocol | None = None
        self._tcp: asyncio.Server | None = None
        self._http: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._tcp_clients = 0

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def stats(self) -> ForwarderStats:
        return self._stats

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(self.host, self._port)
        )
        self._udp = proto
        if self._port == 0:
            assert proto.transport is not None
            self._port = int(proto.transport.get_extra_info("sockname")[1])
        try:
            self._tcp = await asyncio.start_server(
                self._on_tcp, host=self.host, port=self._port, reuse_address=True
            )
        except OSError:
            await self.stop()
            raise
        if any(u.kind == "https" for u in self.upstreams):
            self._http = httpx.AsyncClient(timeout=self.timeout_s, trust_env=False)
        log.info(
            "dns forwarder listening",
            extra={
                "listen": f"{self.host}:{self._port}",
                "upstreams": ",".join(u.label() for u in self.upstreams),
            },
        )

    async def stop(self) -> None:
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 2)
            self._tcp = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # ---- intake ------------------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        self._stats.counters[name] += n

    def _parse_query(self, data: bytes) -> dns.message.Message | None:
        try:
            query = dns.message.from_wire(data)
        except Exception as exc:  # dnspython raises many kinds on junk; all mean "not a query"
            self._drop(reason_for(exc))
            return None
        if query.flags & dns.flags.QR:
            self._drop(DnsDropReason.NOT_A_QUERY)
            return None
        if len(query.question) != 1:
            self._drop(DnsDropReason.QUESTION_COUNT)
            return None
        return query

    def _drop(self, reason: DnsDropReason) -> None:
        self._count("dropped_malformed")
        self._stats.drops[reason] += 1

    def _spawn(self, coro: asyncio.Future[None] | object) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_udp(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._count("queries_udp")
        query = self._parse_query(data)
        if query is None:
            return
        if self._slots.locked():
            self._count("dropped_overload")
            return
        self._spawn(self._answer_udp(query, addr))

    async def _answer_udp(self, query: dns.message.Message, addr: tuple[str | int, ...]) -> None:
        async with self._slots:
            wire = await self._resolve(query)
        limit = max(_MIN_UDP_SIZE, query.payload if query.edns >= 0 else _MIN_UDP_SIZE)
        if len(wire) > limit:
            self._count("truncated_to_client")
            short = dns.message.make_response(query)
            short.flags |= dns.flags.TC
            wire = short.to_wire()
        udp = self._udp
        if udp is not None and udp.transport is not None:
            udp.transport.sendto(wire, addr)

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tcp_clients >= _MAX_TCP_CLIENTS:
            self._count("dropped_tcp_clients")
            writer.close()
            return
        self._tcp_clients += 1
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), _TCP_IDLE_S)
                    (length,) = struct.unpack("!H", head)
                    data = await asyncio.wait_for(reader.readexactly(length), _TCP_IDLE_S)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                self._count("queries_tcp")
                query = self._parse_query(data)
                if query is None:
                    return  # a stream with junk in it cannot be resynchronised
                if self._slots.locked():
                    self._count("dropped_overload")
                    return
                async with self._slots:
                    wire = await self._resolve(query)
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        except ConnectionError:
            return
        finally:
            self._tcp_clients -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # ---- upstreams ---------------------------------------------------------------------

    async def _resolve(self, query: dns.message.Message) -> bytes:
        """The answer's wire form for the client (its ID restored); SERVFAIL when all fail."""
        fallback: dns.message.Message | None = None
        for upstream in self.upstreams:
            counter = self._stats.upstream[upstream.label()]
            try:
                answer = await self._ask(upstream, query)
            except _UpstreamFailed as exc:
                counter[str(exc)] += 1
                continue
            rcode = answer.rcode()
            if rcode in (dns.rcode.SERVFAIL, dns.rcode.REFUSED):
                counter[dns.rcode.to_text(rcode).lower()] += 1
                fallback = answer
                continue
            counter["ok"] += 1
            self._count("answered")
            answer.id = query.id
            return answer.to_wire()
        self._count("servfail")
        if fallback is None:
            fallback = dns.message.make_response(query)
            fallback.set_rcode(dns.rcode.SERVFAIL)
        fallback.id = query.id
        return fallback.to_wire()

    async def _ask(self, upstream: Upstream, query: dns.message.Message) -> dns.message.Message:
        try:
            if upstream.kind == "udp":
                answer = await dns.asyncquery.udp(
                    query, upstream.host, timeout=self.timeout_s, port=upstream.port
                )
                if answer.flags & dns.flags.TC:
                    self._count("tcp_fallback")
                    answer = await dns.asyncquery.tcp(
                        query, upstream.host, timeout=self.timeout_s, port=upstream.port
                    )
                return answer
            if upstream.kind == "tcp":
                return await dns.asyncquery.tcp(
                    query, upstream.host, timeout=self.timeout_s, port=upstream.port
                )
            return await self._ask_https(upstream, query)
        except dns.exception.Timeout as exc:
            raise _UpstreamFailed("timeout") from exc
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise _UpstreamFailed("timeout") from exc
        except (OSError, EOFError, httpx.HTTPError) as exc:
            raise _UpstreamFailed("error") from exc
        except dns.exception.DNSException as exc:
            raise _UpstreamFailed("bad_answer") from exc

    async def _ask_https(
        self, upstream: Upstream, query: dns.message.Message
    ) -> dns.message.Message:
        assert self._http is not None
        assert upstream.url is not None
        wire = query.to_wire()
        # RFC 8484 §4.1: ID 0 keeps HTTP caches effective; the ID is restored for the client.
        wire = b"\x00\x00" + wire[2:]
        response = await self._http.post(
            upstream.url,
            content=wire,
            headers={
                "content-type": "application/dns-message",
                "accept": "application/dns-message",
            },
        )
        if response.status_code != 200:
            raise _UpstreamFailed("error")
        answer = dns.message.from_wire(response.content)
        if not answer.flags & dns.flags.QR or answer.question != query.question:
            raise _UpstreamFailed("bad_answer")
        return answer
