"""The node's DNS forwarder against real DNS servers started on loopback by the test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
import uvicorn

from higgs.node.dns_forwarder import DnsForwarder
from higgs.node.settings import parse_upstream
from tests.integration.node.dns_upstream import ANSWER_A, UpstreamServer

LISTEN = "127.0.0.1"

Factory = Callable[..., Awaitable[UpstreamServer]]


@pytest.fixture
async def upstreams() -> AsyncIterator[Factory]:
    started: list[UpstreamServer] = []

    async def make(host: str, mode: str = "answer", delay_s: float = 0.0) -> UpstreamServer:
        server = UpstreamServer(host=host, mode=mode, delay_s=delay_s)
        await server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


@contextlib.asynccontextmanager
async def forwarder(
    *servers: UpstreamServer | str, **kw: float | int
) -> AsyncIterator[DnsForwarder]:
    ups = [parse_upstream(s if isinstance(s, str) else f"udp://{s.host}:{s.port}") for s in servers]
    fwd = DnsForwarder(LISTEN, 0, ups, **kw)  # type: ignore[arg-type]
    await fwd.start()
    try:
        yield fwd
    finally:
        await fwd.stop()


def a_query(name: str = "example.test.") -> dns.message.Message:
    return dns.message.make_query(name, dns.rdatatype.A)


async def test_answers_over_udp_and_tcp(upstreams: Factory) -> None:
    up = await upstreams("127.0.0.2")
    async with forwarder(up) as fwd:
        r1 = await dns.asyncquery.udp(a_query("one.test."), LISTEN, timeout=3, port=fwd.port)
        r2 = await dns.asyncquery.tcp(a_query("two.test."), LISTEN, timeout=3, port=fwd.port)
    for r in (r1, r2):
        assert r.rcode() == dns.rcode.NOERROR
        assert r.answer[0][0].to_text() == ANSWER_A
    assert ("udp", "one.test.") in up.seen
    assert ("udp", "two.test.") in up.seen
    assert fwd.stats.counters["answered"] == 2


async def test_fails_over_from_a_silent_upstream(upstreams: Factory) -> None:
    dead = await upstreams("127.0.0.3", mode="timeout")
    good = await upstreams("127.0.0.4")
    async with forwarder(dead, good, timeout_s=0.3) as fwd:
        r = await dns.asyncquery.udp(a_query(), LISTEN, timeout=5, port=fwd.port)
    assert r.answer[0][0].to_text() == ANSWER_A
    assert len(dead.seen) == 1
    assert len(good.seen) == 1
    stats = fwd.stats.upstream
    assert stats[f"udp://127.0.0.3:{dead.port}"]["timeout"] == 1
    assert stats[f"udp://127.0.0.4:{good.port}"]["ok"] == 1


async def test_fails_over_on_servfail_and_reports_servfail_when_all_fail(
    upstreams: Factory,
) -> None:
    bad = await upstreams("127.0.0.5", mode="servfail")
    dead = await upstreams("127.0.0.6", mode="timeout")
    async with forwarder(bad, dead, timeout_s=0.3) as fwd:
        r = await dns.asyncquery.udp(a_query(), LISTEN, timeout=5, port=fwd.port)
    assert r.rcode() == dns.rcode.SERVFAIL
    assert fwd.stats.counters["servfail"] == 1
    good = await upstreams("127.0.0.7")
    async with forwarder(bad, good) as fwd:
        r = await dns.asyncquery.udp(a_query(), LISTEN, timeout=5, port=fwd.port)
    assert r.rcode() == dns.rcode.NOERROR


async def test_truncated_upstream_answer_is_retried_over_tcp(upstreams: Factory) -> None:
    up = await upstreams("127.0.0.8", mode="truncate")
    async with forwarder(up) as fwd:
        q = dns.message.make_query("big.test.", dns.rdatatype.TXT, use_edns=0, payload=4096)
        r = await dns.asyncquery.udp(q, LISTEN, timeout=3, port=fwd.port)
        assert not r.flags & dns.flags.TC
        assert len(r.answer[0]) == 10
        assert ("tcp", "big.test.") in up.seen
        assert fwd.stats.counters["tcp_fallback"] == 1

        # A client without EDNS gets TC and then the full answer over TCP, like a stub resolver.
        small = dns.message.make_query("big.test.", dns.rdatatype.TXT)
        r = await dns.asyncquery.udp(small, LISTEN, timeout=3, port=fwd.port)
        assert r.flags & dns.flags.TC
        assert not r.answer
        r = await dns.asyncquery.tcp(small, LISTEN, timeout=3, port=fwd.port)
        assert len(r.answer[0]) == 10


async def test_junk_is_dropped_and_counted_and_service_continues(upstreams: Factory) -> None:
    up = await upstreams("127.0.0.9")
    async with forwarder(up) as fwd:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            response = dns.message.make_response(a_query()).to_wire()
            for junk in (b"", b"\x00", os.urandom(7), os.urandom(300), response):
                sock.sendto(junk, (LISTEN, fwd.port))
        finally:
            sock.close()
        reader, writer = await asyncio.open_connection(LISTEN, fwd.port)
        writer.write(b"\x00\x05hello")
        await writer.drain()
        assert await reader.read() == b""  # the forwarder hangs up on a junk stream
        writer.close()
        r = await dns.asyncquery.udp(a_query(), LISTEN, timeout=3, port=fwd.port)
    assert r.answer[0][0].to_text() == ANSWER_A
    # The empty datagram may or may not reach the protocol; the other five junk inputs do.
    assert fwd.stats.counters["dropped_malformed"] >= 5
    assert len(up.seen) == 1


async def test_excess_queries_are_dropped_not_queued(upstreams: Factory) -> None:
    slow = await upstreams("127.0.0.10", delay_s=1.0)
    async with forwarder(slow, max_inflight=2) as fwd:
        results = await asyncio.gather(
            *(
                dns.asyncquery.udp(a_query(f"n{i}.test."), LISTEN, timeout=3, port=fwd.port)
                for i in range(8)
            ),
            return_exceptions=True,
        )
    answered = [r for r in results if isinstance(r, dns.message.Message)]
    assert len(answered) == 2
    assert fwd.stats.counters["dropped_overload"] == 6
    assert len(slow.seen) == 2


async def test_dns_over_https_upstream() -> None:
    async def app(scope: dict, receive: Callable, send: Callable) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        query = dns.message.from_wire(body)
        assert query.id == 0  # RFC 8484: ID zero on the wire
        answer = UpstreamServer(host="-").answer_for(query).to_wire()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/dns-message")],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    sock = socket.socket()
    sock.bind(("127.0.0.11", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.11", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(100):
            if server.started:
                break
            await asyncio.sleep(0.05)
        async with forwarder(f"http://127.0.0.11:{port}/dns-query") as fwd:
            q = a_query("doh.test.")
            r = await dns.asyncquery.udp(q, LISTEN, timeout=3, port=fwd.port)
        assert r.id == q.id
        assert r.answer[0][0].to_text() == ANSWER_A
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 5)


def test_doh_over_cleartext_is_refused_off_loopback() -> None:
    with pytest.raises(ValueError, match="https"):
        parse_upstream("http://192.0.2.1/dns-query")
