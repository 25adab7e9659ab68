"""The relay's rules with hostile and broken peers: authorization, bad frames, close codes."""

from __future__ import annotations

import asyncio
import json

import pytest
from picows import WSMsgType, ws_connect
from picows.common import WSHandshakeError

from higgs.protocol.relay import encode_data
from higgs.transport.relay_link import RelayLink

from .conftest import RawClient, Relay, eventually, raw_connect, start_relay


async def test_third_party_with_another_sessions_token_can_neither_send_nor_read(
    relay: Relay,
) -> None:
    node_token = relay.add_node("n_1")
    victim_token = relay.add_session("s_victim", 1, "n_1")
    attacker_token = relay.add_session("s_attacker", 2, "n_1")
    node = await raw_connect(relay.node_url, node_token)
    victim = await raw_connect(relay.session_url, victim_token)
    attacker = await raw_connect(relay.session_url, attacker_token)
    await eventually(lambda: relay.hub.is_node_connected("n_1"))

    # The attacker writes frames naming the victim's channel: dropped, counted, never delivered.
    attacker.send(encode_data(1, [b"\x04injected"]))
    await eventually(lambda: relay.dropped("wrong_channel") == 1)
    # The node answers on the victim's channel: only the victim receives it.
    node.send(encode_data(1, [b"\x04for-the-victim"]))
    await eventually(lambda: bool(victim.binary))
    # Its own channel still works, which proves the attacker's link is alive and served.
    attacker.send(encode_data(2, [b"\x04own"]))
    await eventually(lambda: len(node.binary) == 1)

    assert node.binary == [encode_data(2, [b"\x04own"])]
    assert victim.binary == [encode_data(1, [b"\x04for-the-victim"])]
    assert attacker.binary == []
    assert relay.hub.session_counters("s_attacker") == (1, len(encode_data(2, [b"\x04own"])))


async def test_a_node_cannot_inject_into_another_nodes_session(relay: Relay) -> None:
    token_1 = relay.add_node("n_1")
    token_2 = relay.add_node("n_2")
    session_token = relay.add_session("s_1", 7, "n_1")
    relay.add_session("s_2", 8, "n_2")
    await raw_connect(relay.node_url, token_1)
    evil_node = await raw_connect(relay.node_url, token_2)
    client = await raw_connect(relay.session_url, session_token)
    await eventually(lambda: bool(client.text))  # hello

    evil_node.send(encode_data(7, [b"\x04injected"]))
    await eventually(lambda: relay.dropped("wrong_channel") == 1)
    await asyncio.sleep(0.05)
    assert client.binary == []


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "malformed"),
        (b"\x01\x00\x00", "malformed"),
        (b"\x01\x00\x00\x00\x05", "malformed"),  # no record
        (b"\x01\x00\x00\x00\x05\x00\x00", "malformed"),  # zero-length record
        (b"\x01\x00\x00\x00\x05\x00\x05ab", "malformed"),  # truncated record
        (b"\x01\x00\x00\x00\x05\x00\x01ab", "malformed"),  # trailing junk
        (b"\x01\x00\x00\x00\x05\x00", "malformed"),  # half a length
        (b"\x7f\x00\x00\x00\x05\x00\x01a", "unknown_type"),
        (encode_data(5, [b"a"])[:5] + b"\xff\xff" + b"x" * 65_535, "malformed"),  # oversized
    ],
)
async def test_bad_frames_are_dropped_counted_and_the_link_stays_open(
    relay: Relay, frame: bytes, reason: str
) -> None:
    node_token = relay.add_node("n_1")
    session_token = relay.add_session("s_1", 5, "n_1")
    node = await raw_connect(relay.node_url, node_token)
    client = await raw_connect(relay.session_url, session_token)
    await eventually(lambda: relay.hub.is_node_connected("n_1"))

    client.send(frame)
    node.send(frame)
    await eventually(lambda: relay.dropped(reason) == 2)
    good = encode_data(5, [b"\x04still-working"])
    client.send(good)
    node.send(good)
    await eventually(lambda: node.binary == [good] and client.binary == [good])
    assert not client.closed.is_set()
    assert not node.closed.is_set()


async def test_data_in_a_non_binary_message_never_crosses_sessions(relay: Relay) -> None:
    # The hub recognises DATA by content, not by opcode (see SessionLink.on_ws_frame): a
    # DATA-shaped text or pong message for the link's own channel is forwarded as binary, one
    # for another channel is refused like any text, and real control text still arrives.
    node_token = relay.add_node("n_1")
    session_token = relay.add_session("s_1", 5, "n_1")
    relay.add_session("s_2", 6, "n_1")
    node = await raw_connect(relay.node_url, node_token)
    client = await raw_connect(relay.session_url, session_token)
    await eventually(lambda: relay.hub.is_node_connected("n_1"))

    client.send(encode_data(6, [b"\x04other-session"]), kind=WSMsgType.TEXT)
    await eventually(lambda: relay.dropped("malformed") == 1)
    own = encode_data(5, [b"\x04own-session"])
    client.send(own, kind=WSMsgType.TEXT)
    client.send(own, kind=WSMsgType.PONG)
    await eventually(lambda: node.binary == [own, own])
    node.send(json.dumps({"type": "peer_stats", "peers": []}).encode(), kind=WSMsgType.TEXT)
    await eventually(lambda: len(relay.events.messages) == 1)
    assert relay.hub.session_counters("s_2") == (0, 0)
    assert not client.closed.is_set()


async def test_fragmented_messages_are_reassembled_and_junk_fragments_dropped(
    relay: Relay,
) -> None:
    node_token = relay.add_node("n_1")
    session_token = relay.add_session("s_1", 5, "n_1")
    node = await raw_connect(relay.node_url, node_token)
    client = await raw_connect(relay.session_url, session_token)
    await eventually(lambda: relay.hub.is_node_connected("n_1"))

    frame = encode_data(5, [b"\x04" * 300, b"\x04" * 20])
    client.send(frame[:100], fin=False)
    client.send(frame[100:200], fin=False, kind=WSMsgType.CONTINUATION)
    client.send(frame[200:], fin=True, kind=WSMsgType.CONTINUATION)
    await eventually(lambda: node.binary == [frame])

    client.send(b"orphan", kind=WSMsgType.CONTINUATION)  # continuation of nothing
    await eventually(lambda: relay.dropped("malformed") == 1)
    # A fragmented text message from the node reaches the services whole.
    text = json.dumps({"type": "peer_stats", "peers": []}).encode()
    node.send(text[:10], fin=False, kind=WSMsgType.TEXT)
    node.send(text[10:], kind=WSMsgType.CONTINUATION)
    await eventually(lambda: len(relay.events.messages) == 1)
    node.send(b"{not json", kind=WSMsgType.TEXT)
    await eventually(lambda: relay.dropped("malformed") == 2)
    assert not node.closed.is_set()


@pytest.mark.parametrize("token", [None, "hgr_not-a-valid-token", "Basic abc"])
async def test_a_bad_credential_gets_http_401_on_upgrade(relay: Relay, token: str | None) -> None:
    relay.add_node("n_1")
    relay.add_session("s_1", 5, "n_1")
    with pytest.raises(WSHandshakeError) as failure:
        await raw_connect(relay.session_url, token)
    assert failure.value.response is not None
    assert failure.value.response.status == 401


async def test_a_session_token_does_not_open_a_node_link(relay: Relay) -> None:
    relay.add_node("n_1")
    session_token = relay.add_session("s_1", 5, "n_1")
    with pytest.raises(WSHandshakeError):
        await raw_connect(relay.node_url, session_token)


async def test_relay_link_stops_on_401_and_reports_unauthorized(relay: Relay) -> None:
    link = RelayLink(relay.node_url, "hgn_wrong-token-1234", on_data=lambda c, d: None)
    link.start()
    async with asyncio.timeout(5):
        result = await link.wait_closed()
    assert result.code == 4001


async def test_wrong_protocol_version_is_closed_with_4004(relay: Relay) -> None:
    token = relay.add_node("n_1")
    client = await raw_connect(relay.node_url, token, version="2")
    await eventually(client.closed.is_set)
    assert client.close_code == 4004
    assert relay.events.ups == []


async def test_a_second_link_replaces_the_first_with_4003(relay: Relay) -> None:
    relay.add_node("n_1")
    token = relay.add_session("s_1", 5, "n_1")
    first = await raw_connect(relay.session_url, token)
    second = await raw_connect(relay.session_url, token)
    await eventually(first.closed.is_set)
    assert first.close_code == 4003
    assert not second.closed.is_set()


async def test_close_session_says_why_then_closes_with_4002_and_stays_closed(
    relay: Relay,
) -> None:
    node_token = relay.add_node("n_1")
    token = relay.add_session("s_1", 5, "n_1")
    node = await raw_connect(relay.node_url, node_token)
    texts: list[dict[str, object]] = []
    link = RelayLink(relay.session_url, token, on_data=lambda c, d: None, on_text=texts.append)
    link.start()
    async with asyncio.timeout(5):
        await link.wait_connected()
    relay.hub.close_session("s_1", "expired")
    async with asyncio.timeout(5):
        result = await link.wait_closed()
    assert result.code == 4002
    assert {"type": "session_closed", "reason": "expired"} in texts
    # The node's late frames for that channel count as session_closed, and a reconnect with the
    # same token is told the same.
    node.send(encode_data(5, [b"\x04late"]))
    await eventually(lambda: relay.dropped("session_closed") == 1)
    again = await raw_connect(relay.session_url, token)
    await eventually(again.closed.is_set)
    assert again.close_code == 4002


async def test_forget_node_closes_its_link_with_4001_and_refuses_it_after(relay: Relay) -> None:
    token = relay.add_node("n_1")
    node = await raw_connect(relay.node_url, token)
    await eventually(lambda: relay.hub.is_node_connected("n_1"))
    relay.hub.forget_node("n_1", "revoked")
    await eventually(node.closed.is_set)
    assert node.close_code == 4001
    await eventually(lambda: relay.events.downs == ["n_1"])
    with pytest.raises(WSHandshakeError):
        await raw_connect(relay.node_url, token)


class _Deaf(RawClient):
    """Answers nothing: no pongs (auto-pong is off), like a peer whose host vanished."""


async def test_a_peer_that_never_answers_pings_is_closed_with_4008(relay: Relay) -> None:
    token = relay.add_node("n_1")
    headers = {"Authorization": f"Bearer {token}", "Higgs-Relay-Version": "1"}
    _, deaf = await ws_connect(_Deaf, relay.node_url, extra_headers=headers, enable_auto_pong=False)
    assert isinstance(deaf, _Deaf)
    # The fixture pings every 0.2 s and gives up after 0.6 s of silence.
    await eventually(deaf.closed.is_set)
    assert deaf.close_code == 4008


async def test_a_peer_that_answers_pings_stays_connected(relay: Relay) -> None:
    token = relay.add_node("n_1")
    node = await raw_connect(relay.node_url, token)
    await asyncio.sleep(1.5)  # 2.5x the fixture's dead-after: pongs must be keeping it alive
    assert not node.closed.is_set()


async def test_a_slow_reader_fills_its_queue_and_the_oldest_frames_are_dropped() -> None:
    relay = await start_relay(write_high=16 * 1024, write_low=4 * 1024, queue_limit_bytes=32_768)
    try:
        node_token = relay.add_node("n_1")
        token = relay.add_session("s_1", 5, "n_1")
        node = await raw_connect(relay.node_url, node_token)
        # A client that completes the upgrade and then never reads its socket.
        reader, writer = await asyncio.open_connection(relay.host, relay.port)
        writer.write(
            (
                "GET /v1/relay/session HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n"
                "Higgs-Relay-Version: 1\r\n\r\n"
            ).encode()
        )
        status = await reader.readline()
        assert b"101" in status
        frame = encode_data(5, [b"\x04" * 1400])
        # ~100 MB offered; the kernel buffers take a few MB, the hub keeps at most its limits.
        for _ in range(200):
            for _ in range(350):
                node.send(frame)
            await asyncio.sleep(0.005)
            if relay.dropped("queue_full") > 1000:
                break
        await eventually(lambda: relay.dropped("queue_full") > 1000)
        assert not node.closed.is_set()
        writer.close()
    finally:
        await relay.hub.stop()


async def test_a_slow_node_throttles_its_clients_instead_of_dropping_their_traffic() -> None:
    relay = await start_relay(write_high=16 * 1024, write_low=4 * 1024, queue_limit_bytes=32_768)
    try:
        node_token = relay.add_node("n_1")
        token = relay.add_session("s_1", 5, "n_1")
        node = await raw_connect(relay.node_url, node_token)
        client = await raw_connect(relay.session_url, token)
        await eventually(lambda: relay.hub.is_node_connected("n_1"))
        assert node.transport is not None
        node.transport.underlying_transport.pause_reading()  # the node stops reading
        frame = encode_data(5, [b"\x04" * 1400])
        sent = 4000  # ~5.6 MB, more than the kernel and relay buffers hold together
        for i in range(sent):
            client.send(frame)
            if i % 200 == 199:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        node.transport.underlying_transport.resume_reading()
        await eventually(lambda: len(node.binary) + relay.dropped("queue_full") >= sent, 20)
        # The client was paused while the node was full, so almost everything arrived.
        assert relay.dropped("queue_full") < sent * 0.1
        assert len(node.binary) + relay.dropped("queue_full") == sent
    finally:
        await relay.hub.stop()


async def test_relay_link_does_not_fight_a_newer_instance_for_its_place(relay: Relay) -> None:
    relay.add_node("n_1")
    token = relay.add_session("s_1", 5, "n_1")
    link = RelayLink(relay.session_url, token, on_data=lambda c, d: None)
    link.start()
    async with asyncio.timeout(5):
        await link.wait_connected()
    await raw_connect(relay.session_url, token)  # another instance with the same token
    async with asyncio.timeout(5):
        result = await link.wait_closed()
    assert result.code == 4003


def _masked(payload: bytes) -> bytes:
    """A client-to-server binary WebSocket frame (all-zero mask key: XOR with it is a no-op)."""
    n = len(payload)
    head = bytes([0x82, 0x80 | n]) if n < 126 else bytes([0x82, 0xFE]) + n.to_bytes(2, "big")
    return head + b"\x00\x00\x00\x00" + payload


@pytest.mark.parametrize("size", [100, 1000])
async def test_frames_arriving_in_one_read_are_forwarded_whole_and_in_order(
    relay: Relay, size: int
) -> None:
    # One write() of many frames reaches the hub in few reads, so they are coalesced per
    # destination and leave in few writes.
    node_token = relay.add_node("n_1")
    tokens = [relay.add_session("s_1", 5, "n_1"), relay.add_session("s_2", 6, "n_1")]
    node = await raw_connect(relay.node_url, node_token)
    clients = [await raw_connect(relay.session_url, t) for t in tokens]
    await eventually(lambda: relay.hub.is_node_connected("n_1"))

    count = 3000  # enough for the hub's read buffer to grow to reads of hundreds of frames
    up = [encode_data(5, [bytes([4]) + i.to_bytes(2, "big") * (size // 2)]) for i in range(count)]
    assert clients[0].transport is not None
    clients[0].transport.underlying_transport.write(b"".join(_masked(f) for f in up))
    down = [encode_data(5 + i % 2, [bytes([4]) + i.to_bytes(4, "big") * 30]) for i in range(count)]
    assert node.transport is not None
    node.transport.underlying_transport.write(b"".join(_masked(f) for f in down))
    await eventually(
        lambda: (
            len(node.binary) == count and len(clients[0].binary) + len(clients[1].binary) == count
        )
    )
    assert node.binary == up
    assert clients[0].binary == down[0::2]
    assert clients[1].binary == down[1::2]
