"""A node's tunnel MTU reaches its clients: from the registration, and from a heartbeat when
the node's uplink changed (protocol.md §2.2 ``tunnel_mtu``)."""

from __future__ import annotations

from tests.integration.server.conftest import Harness, bearer


async def test_a_heartbeat_with_a_new_tunnel_mtu_changes_later_route_answers(
    srv: Harness,
) -> None:
    node_id, node_token, _ = await srv.node(tunnel_mtu=1420)
    srv.hub.connected.add(node_id)
    client = await srv.client_token("alice")
    r = await srv.route(client)
    assert r.status_code == 201, r.text
    assert r.json()["wireguard"]["mtu"] == 1420

    async def heartbeat(body: dict[str, object]) -> int:
        resp = await srv.http.post(
            f"/v1/nodes/{node_id}/heartbeat", json=body, headers=bearer(node_token)
        )
        return resp.status_code

    assert await heartbeat({"tunnel_mtu": 1340}) == 200
    r = await srv.route(client)
    assert r.json()["wireguard"]["mtu"] == 1340
    # A heartbeat without the field (an older node) leaves it as it is.
    assert await heartbeat({"peers": 0}) == 200
    assert (await srv.route(client)).json()["wireguard"]["mtu"] == 1340
    # An impossible figure is refused by name and changes nothing.
    resp = await srv.http.post(
        f"/v1/nodes/{node_id}/heartbeat", json={"tunnel_mtu": 100}, headers=bearer(node_token)
    )
    assert resp.status_code == 422
    assert "tunnel_mtu" in resp.json()["message"]
    assert (await srv.route(client)).json()["wireguard"]["mtu"] == 1340
