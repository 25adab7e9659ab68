"""Forwarding through the real hub: UDP → bridge → WebSocket → hub → WebSocket → bridge → UDP."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from higgs.protocol.relay import encode_data
from higgs.transport.relay_link import RelayLink
from higgs.transport.udp_bridge import UdpBridge

from .conftest import Relay, UdpPeer, eventually, raw_connect


async def test_datagrams_cross_the_relay_both_ways_through_udp_bridges(relay: Relay) -> None:
    node_token = relay.add_node("n_1")
    session_token = relay.add_session("s_1", 17, "n_1")
    wg_node = await UdpPeer.open()  # stands in for the node's WireGuard port
    wg_client = await UdpPeer.open()  # stands in for the client's WireGuard
    node_bridges: dict[int, UdpBridge] = {}
    node_link: RelayLink
    client_link: RelayLink

    async def bridge_for(channel: int) -> UdpBridge:
        if channel not in node_bridges:
            node_bridges[channel] = await UdpBridge.open(
                lambda dgs: node_link.send_datagrams(channel, dgs),
                peer=wg_node.address,
            )
        return node_bridges[channel]

    bridge_ready = asyncio.Event()

    def node_data(channel: int, datagrams: list[memoryview]) -> None:
        node_bridges[channel].send(datagrams)

    client_bridge = await UdpBridge.open(lambda dgs: client_link.send_datagrams(17, dgs))
    node_link = RelayLink(relay.node_url, node_token, on_data=node_data)
    client_link = RelayLink(
        relay.session_url, session_token, on_data=lambda ch, dgs: client_bridge.send(dgs)
    )
    await bridge_for(17)
    bridge_ready.set()
    node_link.start()
    client_link.start()
    try:
        async with asyncio.timeout(5):
            await node_link.wait_connected()
            await client_link.wait_connected()

        # client WireGuard → client bridge → relay → node bridge → node WireGuard
        wg_client.sendto(b"\x01handshake-initiation", client_bridge.local_address)
        data, source = await wg_node.recv()
        assert data == b"\x01handshake-initiation"
        assert source == node_bridges[17].local_address  # one distinct endpoint per session

        # and back, to the address WireGuard used, learned from its first datagram
        wg_node.sendto(b"\x02handshake-response", source)
        data, source = await wg_client.recv()
        assert data == b"\x02handshake-response"
        assert source == client_bridge.local_address

        # bursts arrive complete and in order (in groups small enough for a UDP socket buffer)
        burst = [bytes([4]) + i.to_bytes(2, "big") * 100 for i in range(200)]
        for i, datagram in enumerate(burst):
            wg_client.sendto(datagram, client_bridge.local_address)
            if i % 50 == 49:
                await asyncio.sleep(0.02)
        received = [(await wg_node.recv())[0] for _ in burst]
        assert received == burst

        await eventually(lambda: "s_1" in relay.events.activity)
        datagrams, size = relay.hub.session_counters("s_1")
        assert datagrams == 202
        assert size > sum(len(d) for d in burst)
        assert relay.datagrams("client_to_node") == 201
        assert relay.datagrams("node_to_client") == 1
    finally:
        await node_link.close()
        await client_link.close()
        client_bridge.close()
        for bridge in node_bridges.values():
            bridge.close()
        wg_node.close()
        wg_client.close()


async def test_node_gets_hello_and_its_messages_reach_the_services(relay: Relay) -> None:
    token = relay.add_node("n_1")
    node = await raw_connect(relay.node_url, token)
    await eventually(lambda: bool(node.text))
    hello = json.loads(node.text[0])
    assert hello["type"] == "hello"
    assert hello["node_id"] == "n_1"
    assert hello["version"] == 1
    await eventually(lambda: relay.events.ups == ["n_1"])
    assert relay.hub.is_node_connected("n_1")

    stats = {"type": "peer_stats", "peers": []}
    node.send(json.dumps(stats).encode(), kind=__import__("picows").WSMsgType.TEXT)
    await eventually(lambda: relay.events.messages == [("n_1", stats)])

    assert await relay.hub.send_control("n_1", {"type": "peer_remove", "session_id": "s_9"})
    await eventually(lambda: any("peer_remove" in t for t in node.text))

    assert node.transport is not None
    node.transport.send_close()
    node.transport.disconnect()
    await eventually(lambda: relay.events.downs == ["n_1"])
    assert not relay.hub.is_node_connected("n_1")
    assert not await relay.hub.send_control("n_1", {"type": "sync", "peers": []})


async def test_session_link_gets_hello_with_its_channel(relay: Relay) -> None:
    relay.add_node("n_1")
    token = relay.add_session("s_1", 99, "n_1")
    client = await raw_connect(relay.session_url, token)
    await eventually(lambda: bool(client.text))
    hello = json.loads(client.text[0])
    assert (hello["type"], hello["session_id"], hello["channel"]) == ("hello", "s_1", 99)


async def test_frames_are_forwarded_unchanged_and_batched_frames_stay_whole(relay: Relay) -> None:
    node_token = relay.add_node("n_1")
    session_token = relay.add_session("s_1", 5, "n_1")
    node = await raw_connect(relay.node_url, node_token)
    client = await raw_connect(relay.session_url, session_token)
    frame = encode_data(5, [b"\x01" * 1420, b"\x02" * 3, b"\x03"])
    client.send(frame)
    await eventually(lambda: bool(node.binary))
    assert node.binary == [frame]
    reply = encode_data(5, [b"\x04" * 60])
    node.send(reply)
    await eventually(lambda: bool(client.binary))
    assert client.binary == [reply]


async def test_frame_to_a_node_without_link_is_counted_no_peer(relay: Relay) -> None:
    relay.add_node("n_1")
    token = relay.add_session("s_1", 5, "n_1")
    client = await raw_connect(relay.session_url, token)
    client.send(encode_data(5, [b"x"]))
    await eventually(lambda: relay.dropped("no_peer") == 1)
    assert relay.hub.session_counters("s_1") == (0, 0)


async def test_relay_link_batches_what_is_queued_in_one_loop_turn(relay: Relay) -> None:
    node_token = relay.add_node("n_1")
    session_token = relay.add_session("s_1", 5, "n_1")
    node = await raw_connect(relay.node_url, node_token)
    link = RelayLink(relay.session_url, session_token, on_data=lambda c, d: None)
    link.start()
    try:
        async with asyncio.timeout(5):
            await link.wait_connected()
        await eventually(lambda: relay.hub.is_node_connected("n_1"))
        link.send_datagrams(5, [b"\x04a"])
        link.send_datagrams(5, [b"\x04b", b"\x04c"])
        await eventually(lambda: bool(node.binary))
        await asyncio.sleep(0.05)
        assert node.binary == [encode_data(5, [b"\x04a", b"\x04b", b"\x04c"])]
        # 100 queued datagrams go out as two frames of at most 64 records.
        link.send_datagrams(5, [b"\x04" + bytes([i]) for i in range(100)])
        await eventually(lambda: len(node.binary) == 3)
    finally:
        await link.close()


async def test_relay_link_reconnects_after_the_server_restarts() -> None:
    from prometheus_client import CollectorRegistry

    from higgs.common.backoff import Backoff
    from higgs.common.secrets import hash_token, new_token
    from higgs.server.relay.hub import RelayHubServer

    from .conftest import RecordingEvents, start_relay

    first = await start_relay()
    port = first.port
    token = new_token("hgn_")
    first.hub.allow_node("n_1", hash_token(token))
    states: list[bool] = []
    link = RelayLink(
        first.node_url,
        token,
        on_data=lambda c, d: None,
        on_state=states.append,
        backoff=Backoff(initial=0.05, maximum=0.2),
    )
    link.start()
    second = None
    try:
        async with asyncio.timeout(5):
            await link.wait_connected()
        await first.hub.stop()  # going away (1001): the link must come back by itself
        await eventually(lambda: states == [True, False])
        events = RecordingEvents()
        second = RelayHubServer(events, CollectorRegistry())
        second.allow_node("n_1", hash_token(token))
        await second.start("127.0.0.1", port)
        await eventually(lambda: events.ups == ["n_1"])
        # The hub can see the link before the client's own state callback has run.
        await eventually(lambda: states == [True, False, True])
    finally:
        await link.close()
        if second is not None:
            await second.stop()


@pytest.mark.root
async def test_relay_link_marks_its_socket_for_policy_routing(relay: Relay) -> None:
    token = relay.add_node("n_1")
    seen: list[int] = []

    def inspect(sock: socket.socket) -> None:
        seen.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK))

    link = RelayLink(
        relay.node_url, token, on_data=lambda c, d: None, fwmark=0x4867, sock_setup=inspect
    )
    link.start()
    try:
        async with asyncio.timeout(5):
            await link.wait_connected()
        assert seen == [0x4867]  # set before connect, so the SYN already carries it
    finally:
        await link.close()
