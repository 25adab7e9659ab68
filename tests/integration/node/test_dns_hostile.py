"""Malformed queries at the node's DNS forwarder while real queries keep being answered."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
from collections import Counter

import dns.asyncquery
import dns.message
import dns.rdatatype

from higgs.node.dns_drops import DnsDropReason
from tests.integration.node.dns_upstream import ANSWER_A
from tests.integration.node.test_dns_forwarder import (  # noqa: F401 - upstreams is a fixture
    LISTEN,
    Factory,
    a_query,
    forwarder,
    upstreams,
)

QUERIES = int(os.environ.get("HIGGS_HOSTILE_QUERIES", "5000"))
ROUND = 250  # hostile queries between two real ones
RSS_GROWTH_LIMIT_KB = 64 * 1024


def _header(questions: int, flags: int = 0x0100) -> bytes:
    return struct.pack("!HHHHHH", 0x1234, flags, questions, 0, 0, 0)


_QUESTION_TAIL = b"\x00\x01\x00\x01"  # type A, class IN


def _hostile(rng: random.Random) -> tuple[bytes, DnsDropReason | None]:
    """One malformed query and the reason it must be counted under (None: random garbage)."""
    pick = rng.randrange(10)
    if pick == 0:  # truncated: not even a header
        return rng.randbytes(rng.randrange(1, 12)), DnsDropReason.SHORT
    if pick == 1:  # a compression loop: the name points at itself
        return _header(1) + b"\xc0\x0c" + _QUESTION_TAIL, DnsDropReason.BAD_NAME
    if pick == 2:  # a label length with the reserved 0b01 type bits
        return _header(1) + b"\x41abc\x00" + _QUESTION_TAIL, DnsDropReason.BAD_NAME
    if pick == 3:  # a name over 255 octets
        labels = (b"\x3f" + b"a" * 63) * 5
        return _header(1) + labels + b"\x00" + _QUESTION_TAIL, DnsDropReason.BAD_NAME
    if pick == 4:  # ends inside the question
        return _header(1) + b"\x05ab", DnsDropReason.MALFORMED
    if pick == 5:  # a valid query with bytes after it
        return a_query().to_wire() + rng.randbytes(8), DnsDropReason.TRAILING_JUNK
    if pick == 6:  # a response sent to the resolver
        return dns.message.make_response(a_query()).to_wire(), DnsDropReason.NOT_A_QUERY
    if pick == 7:  # no question, or two
        if rng.random() < 0.5:
            return _header(0), DnsDropReason.QUESTION_COUNT
        question = b"\x01a\x00" + _QUESTION_TAIL
        return _header(2) + question * 2, DnsDropReason.QUESTION_COUNT
    if pick == 8:  # oversized garbage
        return rng.randbytes(rng.randrange(1500, 9000)), None
    return rng.randbytes(rng.randrange(12, 600)), None


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_malformed_queries_are_counted_by_reason_and_real_ones_answered(
    upstreams: Factory,  # noqa: F811 - the fixture imported above
) -> None:
    up = await upstreams("127.0.0.11")
    rng = random.Random(17)
    expected: Counter[DnsDropReason] = Counter()
    garbage = 0
    async with forwarder(up) as fwd:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        answered = 0
        try:
            r = await dns.asyncquery.udp(a_query("warm.test."), LISTEN, timeout=3, port=fwd.port)
            assert r.answer[0][0].to_text() == ANSWER_A
            rss_before = _rss_kb()
            async with asyncio.timeout(max(60.0, QUERIES / 100)):
                for i in range(QUERIES):
                    data, reason = _hostile(rng)
                    sock.sendto(data, (LISTEN, fwd.port))
                    # The forwarder shares this loop: let it read, or the kernel drops
                    # datagrams (uncounted by us) once its socket buffer is full.
                    await asyncio.sleep(0)
                    if reason is None:
                        garbage += 1
                    else:
                        expected[reason] += 1
                    if i % ROUND == ROUND - 1:
                        # A real query still gets its answer in the middle of the storm (its
                        # arrival also proves the forwarder has read every datagram before it).
                        name = f"real-{i}.test."
                        r = await dns.asyncquery.udp(
                            a_query(name), LISTEN, timeout=5, port=fwd.port
                        )
                        assert r.answer[0][0].to_text() == ANSWER_A
                        answered += 1
                r = await dns.asyncquery.udp(
                    a_query("last.test."), LISTEN, timeout=5, port=fwd.port
                )
                assert r.answer[0][0].to_text() == ANSWER_A
        finally:
            sock.close()
        stats = fwd.stats
        # Nothing was lost on loopback: every hostile datagram reached the forwarder, was
        # dropped, and is counted once, crafted ones under the reason they were built for.
        assert stats.counters["dropped_malformed"] == QUERIES
        assert sum(stats.drops.values()) == QUERIES
        for reason, count in expected.items():
            assert stats.drops[reason] >= count, reason
        assert sum(stats.drops[r] - expected[r] for r in DnsDropReason) == garbage
        assert stats.counters["answered"] == answered + 2
        assert len(up.seen) == answered + 2  # no malformed query was passed upstream
    growth = _rss_kb() - rss_before
    assert growth < RSS_GROWTH_LIMIT_KB, f"RSS grew by {growth} KiB"
