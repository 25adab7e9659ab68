"""Relay hosts that serve the WebSocket relay hub (issue 14 item 3, docs/scaleout.md "Relay
hosts"): two real ``bosonserver relay`` processes beside the two instances, each with its own
relay address, port range and hub. A WebSocket-relayed session goes to the host the client's
and the node's RTTs put first; the route answer sends the client to that host's hub and the
node's ``peer_add`` names the same hub, so both legs meet there (the host's own counters show
the datagrams, the other host's none). Killing that host moves the session, and its node is
told the other host's hub."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from higgs.lab.procs import stop_processes
from higgs.server.services.identity import IdentityService
from higgs.server.store import relay_hosts as hosts_store
from higgs.server.store.db import Database
from tests.integration.scaleout.conftest import Deployment, RelayHost
from tests.integration.scaleout.kit import (
    attached_node,
    holder,
    other_than,
    relayed_data_flows,
    route,
    unique,
    until,
)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="runs PostgreSQL as its own user"),
    pytest.mark.asyncio(loop_scope="module"),
]


async def registry(db: Database) -> dict[str, hosts_store.HostView]:
    async with db.begin() as conn:
        return {h.address: h for h in await conn.run_sync(hosts_store.all_hosts)}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def relay_hosts(deployment: Deployment, db: Database) -> AsyncIterator[list[RelayHost]]:
    hosts = [
        deployment.start_relay_host("127.0.0.2", "42000-42049"),
        deployment.start_relay_host("127.0.0.3", "42100-42149"),
    ]
    try:

        async def registered() -> bool:
            found = await registry(db)
            return all(
                h.ip in found and found[h.ip].ws_url == h.ws_url and found[h.ip].stats
                for h in hosts
            )

        await until(registered, 60, "both relay hosts registered with their hub")
        yield hosts
    finally:
        stop_processes([h.proc for h in hosts if h.proc.alive()], timeout=20)


def ws_counts(view: hosts_store.HostView) -> tuple[int, int]:
    stats: dict[str, Any] = dict(view.stats)
    return int(stats.get("ws_to_node_datagrams", 0)), int(stats.get("ws_to_client_datagrams", 0))


async def test_both_legs_of_a_websocket_session_meet_on_the_chosen_relay_hosts_hub(
    deployment: Deployment, db: Database, relay_hosts: list[RelayHost]
) -> None:
    near, far = relay_hosts[1], relay_hosts[0]
    client = await IdentityService(db).add_client(unique("c-hosthub"))
    async with httpx.AsyncClient(timeout=10) as http, attached_node(deployment, db, http) as node:
        other = other_than(deployment, await holder(db, node.node_id))
        # The client measured `near` much closer; the node measured neither (1000 ms each).
        answer = await route(http, other, client, relay_rtt_ms={near.ip: 2.0, far.ip: 80.0})
        sid, relay = answer["session_id"], answer["relay"]
        assert relay["url"] == near.ws_url + "/v1/relay/session", answer
        assert answer["udp_relay"]["endpoint"].startswith(near.ip + ":"), answer
        await until(lambda: sid in node.peers_of("peer_add"), 5, "peer_add via the bus")
        peer = node.peer(sid)
        assert peer is not None
        assert peer["relay_hub"] == near.ws_url, peer

        before_near = ws_counts((await registry(db))[near.ip])
        hub_link = node.hub_link(peer["relay_hub"])
        try:
            await relayed_data_flows(node, relay["url"], relay, node_link=hub_link)

            # The host's heartbeat (every second) reports what its hub carried each way.
            async def near_carried() -> bool:
                up, down = ws_counts((await registry(db))[near.ip])
                return up > before_near[0] and down > before_near[1]

            await until(near_carried, 5, "the chosen host's hub counted both directions")
            assert ws_counts((await registry(db))[far.ip]) == (0, 0)

            # The chosen host dies: the session moves to the other, and its node is told
            # that host's hub (a sync), where its leg is admitted again.
            near.proc.popen.send_signal(signal.SIGKILL)
            near.proc.popen.wait(10)

            def moved() -> bool:
                now = node.peer(sid)
                return now is not None and now.get("relay_hub") == far.ws_url

            took = await until(moved, 15, "the node told the other host's hub")
            print(f"\nrelay host {near.ip} killed: its WebSocket session moved in {took:.1f} s")
            far_link = node.hub_link(far.ws_url)
            try:
                moved_url = far.ws_url + "/v1/relay/session"
                await relayed_data_flows(node, moved_url, relay, node_link=far_link)
            finally:
                await far_link.close()
        finally:
            await hub_link.close()
