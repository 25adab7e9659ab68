"""The lab's opt-in IPv6 plan: documentation prefix only, gateways on link, ip-batch text."""

from __future__ import annotations

from ipaddress import IPv6Network

import pytest

from higgs.lab.plan import default_plan, ipv6_plan
from higgs.lab.render import render_ipv6_batch

DOC6 = IPv6Network("2001:db8::/32")


@pytest.mark.parametrize("clients", [1, 2, 3])
def test_every_host_gets_documentation_addresses_and_on_link_gateways(clients: int) -> None:
    plan = default_plan(clients=clients)
    v6 = ipv6_plan(plan)
    assert set(v6) == set(plan.hosts)
    seen = set()
    for role, host in v6.items():
        for ifname, addr in host.addresses:
            assert addr.ip in DOC6, (role, addr)
            assert addr.ip not in seen
            seen.add(addr.ip)
            assert any(ifname in (c.a_if, c.b_if) for c in plan.cables) or any(
                b.name == ifname and b.host == role for b in plan.bridges
            ), (role, ifname)
        if host.gateway is not None:
            assert any(host.gateway in a.network for _, a in host.addresses), role
        for prefix, via in host.routes:
            assert prefix.subnet_of(DOC6)
            assert any(via in a.network for _, a in host.addresses), role


def test_the_lans_are_distinct_global_prefixes() -> None:
    v6 = ipv6_plan(default_plan(clients=2))
    assert str(v6["node"].address().ip) == "2001:db8:1::10"
    assert str(v6["printer"].address().ip) == "2001:db8:1::20"
    assert str(v6["client"].address().ip) == "2001:db8:2::10"
    assert str(v6["client2"].address().ip) == "2001:db8:2::11"
    core_routes = {str(p): str(v) for p, v in v6["core"].routes}
    assert core_routes == {
        "2001:db8:1::/64": str(v6["home_router"].address("wan0").ip),
        "2001:db8:2::/64": str(v6["client_router"].address("wan0").ip),
    }


def test_render_ipv6_batch() -> None:
    v6 = ipv6_plan(default_plan())
    assert render_ipv6_batch(v6["home_router"]) == (
        "addr add 2001:db8:0:113::10/64 dev wan0 nodad\n"
        "addr add 2001:db8:1::1/64 dev lan0 nodad\n"
        "route add ::/0 via 2001:db8:0:113::1\n"
    )
    assert "route add 2001:db8:1::/64 via 2001:db8:0:113::10\n" in render_ipv6_batch(v6["core"])
