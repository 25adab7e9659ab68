"""The NAT-PMP/PCP adapters against small fake routers on loopback (real UDP sockets), and
the probe tap on a real raw socket (root)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from higgs.osnet.portmap import Method, PortMapError, udp
from higgs.osnet.probe_tap import ProbeTap
from higgs.protocol import natpmp
from higgs.protocol.reachability import encode_probe

Reply = Callable[[bytes], list[bytes]]


class FakeRouter(asyncio.DatagramProtocol):
    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.received: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.received.append(data)
        for answer in self.reply(data):
            self.transport.sendto(answer, addr)  # type: ignore[attr-defined]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Reply], asyncio.Future[tuple[FakeRouter, int]]]]:
    transports: list[asyncio.BaseTransport] = []

    async def start(reply: Reply) -> tuple[FakeRouter, int]:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            lambda: FakeRouter(reply), local_addr=("127.0.0.1", 0)
        )
        transports.append(transport)
        return proto, transport.get_extra_info("sockname")[1]

    yield start  # type: ignore[misc]
    for t in transports:
        t.close()


def natpmp_router(data: bytes) -> list[bytes]:
    if data == natpmp.encode_external_address_request():
        return [bytes.fromhex("0080 0000 00000001 cb00710a")]
    internal = data[4:6]
    return [bytes.fromhex("0081 0000 00000001") + internal + internal + data[8:12]]


async def test_natpmp_map(serve: Callable[[Reply], asyncio.Future[tuple[FakeRouter, int]]]) -> None:
    router, port = await serve(natpmp_router)
    m = await udp.natpmp_map("127.0.0.1", "127.0.0.1", 51820, 600, port=port)
    assert (m.method, m.external_ip, m.external_port, m.lifetime_s) == (
        Method.NATPMP, "203.0.113.10", 51820, 600,
    )  # fmt: skip
    assert router.received[1] == natpmp.encode_map_request(51820, 51820, 600)


async def test_pcp_map_skips_a_foreign_answer_and_takes_its_own(
    serve: Callable[[Reply], asyncio.Future[tuple[FakeRouter, int]]],
) -> None:
    def reply(data: bytes) -> list[bytes]:
        header = bytes.fromhex("02 81 00 00 00000258 00000001") + bytes(12)
        body = data[24:40] + data[40:42] + data[40:42]
        external = b"\0" * 10 + b"\xff\xff" + bytes([203, 0, 113, 10])
        foreign = header + bytes(12) + body[12:] + external
        return [foreign, header + body + external]

    _router, port = await serve(reply)
    nonce = udp.pcp_new_nonce()
    m = await udp.pcp_map("127.0.0.1", "127.0.0.1", 51820, 600, nonce, port=port)
    assert m.nonce == nonce.hex()
    assert m.endpoint == "203.0.113.10:51820"


async def test_pcp_against_a_natpmp_only_router_says_so(
    serve: Callable[[Reply], asyncio.Future[tuple[FakeRouter, int]]],
) -> None:
    _, port = await serve(lambda data: [bytes.fromhex("0081 0001 00000001")])
    with pytest.raises(PortMapError) as info:
        await udp.pcp_map("127.0.0.1", "127.0.0.1", 51820, 600, udp.pcp_new_nonce(), port=port)
    assert info.value.reason == "unsupported"


async def test_refusal_and_junk_are_reported(
    serve: Callable[[Reply], asyncio.Future[tuple[FakeRouter, int]]],
) -> None:
    _, port = await serve(lambda data: [b"junk", bytes.fromhex("0080 0002 00000001 00000000")])
    with pytest.raises(PortMapError) as info:
        await udp.natpmp_map("127.0.0.1", "127.0.0.1", 51820, 600, port=port)
    assert info.value.reason == "refused"
    assert "not_authorized" in info.value.detail


async def test_nothing_listening_fails_fast() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(PortMapError) as info:
        await udp.natpmp_map("127.0.0.1", "127.0.0.1", 51820, 600, port=port)
    assert info.value.reason == "port_unreachable"
    assert loop.time() - started < sum(udp.RETRIES_S)


async def test_silence_is_no_answer_within_the_bound(
    serve: Callable[[Reply], asyncio.Future[tuple[FakeRouter, int]]],
) -> None:
    router, port = await serve(lambda data: [])
    with pytest.raises(PortMapError) as info:
        await udp.natpmp_map("127.0.0.1", "127.0.0.1", 51820, 600, port=port)
    assert info.value.reason == "no_answer"
    assert len(router.received) == len(udp.RETRIES_S)


async def test_blocking_delete_used_by_the_undo(
    serve: Callable[[Reply], asyncio.Future[tuple[FakeRouter, int]]],
) -> None:
    router, port = await serve(natpmp_router)
    done = await asyncio.to_thread(udp.natpmp_delete_blocking, "127.0.0.1", 51820, port=port)
    assert done
    assert router.received == [natpmp.encode_map_request(51820, 0, 0)]


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="a raw socket needs root (CAP_NET_RAW)")
def test_probe_tap_hears_only_probes_for_its_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # a port that is free now (like wireguard-go's, taken)
    tap = ProbeTap(port)
    try:
        nonce = os.urandom(16)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            out.sendto(b"not a probe" + bytes(13), ("127.0.0.1", port))
            out.sendto(encode_probe(os.urandom(16)), ("127.0.0.1", port + 1))
            out.sendto(encode_probe(nonce), ("127.0.0.1", port))
        got: list[bytes] = []
        for _ in range(50):
            got += tap.read()
            if got:
                break
            import time

            time.sleep(0.02)
        assert got == [nonce]
        assert tap.read() == []
    finally:
        tap.close()
