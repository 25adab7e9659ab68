"""UdpBridge on loopback: batching per loop turn, a learned peer, a fixed peer's filter."""

from __future__ import annotations

import asyncio
import socket

from higgs.transport.udp_bridge import UdpBridge


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    return sock


async def _until(predicate: object) -> None:
    async with asyncio.timeout(5):
        while not predicate():  # type: ignore[operator]  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_learns_its_peer_from_the_first_datagram_and_batches_per_turn() -> None:
    batches: list[list[bytes]] = []
    bridge = await UdpBridge.open(batches.append)
    wireguard = _udp()
    try:
        assert bridge.peer is None
        bridge.send([b"nobody to send to yet"])  # dropped: the peer is not known
        for i in range(5):
            wireguard.sendto(bytes([i]) * 10, bridge.local_address)
        await _until(lambda: sum(len(b) for b in batches) == 5)
        assert [d for b in batches for d in b] == [bytes([i]) * 10 for i in range(5)]
        assert len(batches) < 5  # several datagrams per handover
        assert bridge.peer == wireguard.getsockname()
        bridge.send([memoryview(b"reply")])
        data, source = await asyncio.to_thread(wireguard.recvfrom, 2048)
        assert (data, source) == (b"reply", bridge.local_address)
    finally:
        bridge.close()
        wireguard.close()


async def test_a_fixed_peer_bridge_ignores_other_senders() -> None:
    wireguard, stranger = _udp(), _udp()
    batches: list[list[bytes]] = []
    bridge = await UdpBridge.open(batches.append, peer=wireguard.getsockname())
    try:
        stranger.sendto(b"injected", bridge.local_address)
        wireguard.sendto(b"genuine", bridge.local_address)
        await _until(lambda: bool(batches))
        await asyncio.sleep(0.05)
        assert batches == [[b"genuine"]]
        assert bridge.ignored == 1
    finally:
        bridge.close()
        wireguard.close()
        stranger.close()
