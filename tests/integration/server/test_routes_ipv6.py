"""IPv6 in the route answer: a node that registered an IPv6 prefix gets its clients an IPv6
address derived from their IPv4 one (docs/protocol.md §2.3), and its IPv6 resolver; a node
without one, or one whose heartbeat says it lost IPv6, does not."""

from __future__ import annotations

import ipaddress

import pytest

from tests.integration.server.conftest import Harness, bearer, node_body


@pytest.mark.stores
async def test_node_with_ipv6_prefix_gets_clients_collision_free_ipv6(srv: Harness) -> None:
    node_id, _token, _body = await srv.node(tunnel_subnet_v6="fd12:3456:789a::/64")
    r = await srv.http.get("/v1/admin/nodes", headers=bearer(srv.admin_token))
    (node,) = [n for n in r.json()["nodes"] if n["node_id"] == node_id]
    assert node["tunnel_subnet_v6"] == "fd12:3456:789a::/64"

    client = await srv.client_token("alice")
    seen = set()
    for _ in range(3):
        r = await srv.route(client)
        assert r.status_code == 201, r.text
        wg = r.json()["wireguard"]
        v4 = ipaddress.IPv4Interface(wg["address"])
        v6 = ipaddress.IPv6Interface(wg["address_v6"])
        assert v6.network.prefixlen == 128
        assert v6.ip in ipaddress.IPv6Network("fd12:3456:789a::/64")
        # Same host number as the IPv4 address: unique because the IPv4 one is.
        assert int(v6.ip) & 0xFF == int(v4.ip) & 0xFF
        assert v6.ip != ipaddress.IPv6Address("fd12:3456:789a::1")
        seen.add(v6.ip)
        assert wg["dns"] == ["10.77.0.1", "fd12:3456:789a::1"]
        assert "::/0" in wg["allowed_ips"]
    assert len(seen) == 3


async def test_register_answer_names_the_nodes_ipv6_address(srv: Harness) -> None:
    body = node_body(tunnel_subnet_v6="fd00:1:2::/64")
    r = await srv.http.post(
        "/v1/nodes/register", json=body, headers=bearer(await srv.enrollment_key(1))
    )
    assert r.status_code == 201, r.text
    assert r.json()["tunnel_address_v6"] == "fd00:1:2::1/64"


async def test_bad_ipv6_prefix_is_refused_naming_the_field(srv: Harness) -> None:
    body = node_body(tunnel_subnet_v6="2001:db8::/64")
    r = await srv.http.post(
        "/v1/nodes/register", json=body, headers=bearer(await srv.enrollment_key(1))
    )
    assert r.status_code == 422, r.text
    assert "tunnel_subnet_v6" in r.json()["message"]


async def test_node_without_ipv6_or_that_lost_it_gets_no_ipv6(srv: Harness) -> None:
    await srv.node()
    client = await srv.client_token("alice")
    wg = (await srv.route(client)).json()["wireguard"]
    assert wg["address_v6"] is None
    assert wg["dns"] == ["10.77.0.1"]

    node_id, token, _ = await srv.node(
        tunnel_subnet="10.78.0.0/24", tunnel_subnet_v6="fd12:3456:789a::/64"
    )
    r = await srv.http.post(
        f"/v1/nodes/{node_id}/heartbeat", json={"ipv6": False}, headers=bearer(token)
    )
    assert r.status_code == 200, r.text
    wg = (await srv.route(client, node_id=node_id)).json()["wireguard"]
    assert wg["address_v6"] is None
    assert wg["dns"] == ["10.78.0.1"]
