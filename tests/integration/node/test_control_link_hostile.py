"""Malformed commands from the server side of the node's control link, while a relayed
session carries traffic: each is counted by reason, and the link and the session stay up."""

from __future__ import annotations

import json
import random

from picows import WSMsgType

from higgs.node.control_link import ControlLink
from higgs.server.relay.hub import RelayHubServer
from higgs.server.relay.links import NodeLink
from tests.integration.node.test_control_link import (  # noqa: F401 - setup is a fixture
    NODE,
    Events,
    FakeWireGuard,
    peer,
    session_client,
    setup,
    until,
)
from tests.unit.node.test_peers import K1, Table

ROUNDS = 20
PER_ROUND = 50


async def test_malformed_commands_are_counted_and_the_session_keeps_working(
    setup: tuple[RelayHubServer, Events, ControlLink, Table, FakeWireGuard],  # noqa: F811
) -> None:
    hub, events, link, table, _ = setup
    await hub.send_control(
        NODE, {"type": "sync", "peers": [peer("s_1", 17, K1, "10.77.0.5/32", True)]}
    )
    await until(lambda: link.relayed_channels == [17])
    client, got = await session_client(hub, "s_1", 17)
    node_link = hub.tables.nodes[NODE].link
    assert isinstance(node_link, NodeLink)
    transport = node_link.transport
    assert transport is not None
    rng = random.Random(17)
    expected = {"link_malformed": 0, "control_invalid": 0, "control_unknown": 0, "no_session": 0}
    try:
        for r in range(ROUNDS):
            for _ in range(PER_ROUND):
                pick = rng.randrange(7)
                if pick == 0:  # not JSON, or not UTF-8
                    transport.send(WSMsgType.TEXT, b"\xff{" + rng.randbytes(20))
                    expected["link_malformed"] += 1
                elif pick == 1:  # JSON, but not an object
                    transport.send(
                        WSMsgType.TEXT, json.dumps(rng.choice([[1, 2], 3, "x"])).encode()
                    )
                    expected["link_malformed"] += 1
                elif pick == 2:  # a known command with its fields missing or of the wrong type
                    bad = rng.choice(
                        [
                            {"type": "peer_add", "session_id": "s_x"},
                            {"type": "peer_add", **peer("s_z", -1, K1, "10.77.0.9/32", True)},
                            {"type": "peer_remove", "session_id": 5},
                            {"type": "sync", "peers": "all"},
                            {"type": "peer_add", **peer("s_z", 40, "not-a-key", "x", True)},
                        ]
                    )
                    transport.send(WSMsgType.TEXT, json.dumps(bad).encode())
                    expected["control_invalid"] += 1
                elif pick == 3:  # a command this node does not know
                    transport.send(WSMsgType.TEXT, b'{"type": "format_disk", "all": true}')
                    expected["control_unknown"] += 1
                elif pick == 4:  # a binary frame the parser rejects
                    transport.send(WSMsgType.BINARY, b"\x01\x00\x00\x00\x11\x00\x09ab")
                    expected["link_malformed"] += 1
                elif pick == 5:  # an oversized command (within the WebSocket limit)
                    big = {"type": "sync", "peers": [{"junk": "x" * 1000}] * 200}
                    transport.send(WSMsgType.TEXT, json.dumps(big).encode())
                    expected["control_invalid"] += 1
                else:  # data for a channel with no session
                    transport.send(WSMsgType.BINARY, b"\x01\x00\x00\x01\x00\x00\x01z")
                    expected["no_session"] += 1
            # The relayed session still carries datagrams both ways through it.
            payload = f"round-{r}".encode()
            client.send_datagrams(17, [payload])
            await until(lambda p=payload: b"re:" + p in got)  # type: ignore[misc]
        await until(lambda: link.counters["control_invalid"] == expected["control_invalid"])
        status = link.status()
        assert status["link_malformed"] == expected["link_malformed"]
        assert link.counters["control_unknown"] == expected["control_unknown"]
        assert link.counters["data_no_session"] == expected["no_session"]
        assert link.counters["control_failed"] == 0  # every bad command was refused, none crashed
        assert link.connected
        assert events.ups == [NODE]  # the link never dropped and reconnected
        assert link.relayed_channels == [17]
        assert table.rows == {K1: ("10.77.0.5/32",)}  # no bad command changed the peers
    finally:
        await client.close()
