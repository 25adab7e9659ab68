from __future__ import annotations

import pytest

from higgs.lab.names import RunNames
from higgs.lab.plan import default_plan
from higgs.lab.render import (
    render_dnat_udp,
    render_host_batch,
    render_nat_table,
    render_root_batch,
)

NAMES = RunNames(prefix="hl", suffix="abc123")


def test_root_batch_creates_namespaces_then_veths_inside_them() -> None:
    batch = render_root_batch(default_plan(), NAMES).splitlines()
    assert batch[:3] == [
        "netns add hl-abc123-core",
        "netns add hl-abc123-internet",
        "netns add hl-abc123-server",
    ]
    assert (
        "link add name eth0 netns hl-abc123-node type veth peer name p-node netns"
        " hl-abc123-home_router"
    ) in batch
    # No veth is ever created in the root namespace: every end names its namespace.
    for line in batch:
        if line.startswith("link add"):
            assert line.count(" netns hl-abc123-") == 2


def test_home_router_batch_golden() -> None:
    assert render_host_batch(default_plan(), "home_router") == (
        "link set lo up\n"
        "link add name lan0 type bridge\n"
        "link set p-node master lan0\n"
        "link set p-prn master lan0\n"
        "link set wan0 up\n"
        "link set p-node up\n"
        "link set p-prn up\n"
        "link set lan0 up\n"
        "addr add 203.0.113.10/28 dev wan0\n"
        "addr add 192.168.1.1/24 dev lan0\n"
        "route add default via 203.0.113.1\n"
    )


def test_core_has_no_default_route() -> None:
    assert "route add default" not in render_host_batch(default_plan(), "core")


def test_nat_table_masquerades_the_lan_out_of_the_wan() -> None:
    script = render_nat_table(default_plan(), "client_router")
    assert 'oifname "wan0" ip saddr 10.0.2.0/24 masquerade' in script
    assert script.startswith("table ip hl_lab {")


def test_nat_table_only_for_nat_routers() -> None:
    with pytest.raises(ValueError, match="not a NAT router"):
        render_nat_table(default_plan(), "core")


def test_dnat_forwards_udp_on_the_wan_address() -> None:
    assert render_dnat_udp(default_plan(), "home_router", 51820, "192.168.1.10", 51820) == (
        'add rule ip hl_lab prerouting iifname "wan0" ip daddr 203.0.113.10'
        " udp dport 51820 dnat to 192.168.1.10:51820\n"
    )


@pytest.mark.parametrize(("port", "to_port"), [(0, 1), (1, 70000), (-5, 5)])
def test_dnat_refuses_bad_ports(port: int, to_port: int) -> None:
    with pytest.raises(ValueError, match="bad port"):
        render_dnat_udp(default_plan(), "home_router", port, "192.168.1.10", to_port)


def test_symmetric_router_masquerades_with_random_ports_cone_keeps_them() -> None:
    cone = render_nat_table(default_plan(), "home_router")
    sym = render_nat_table(default_plan(home_nat="symmetric"), "home_router")
    assert "ip saddr 192.168.1.0/24 masquerade\n" in cone
    assert "ip saddr 192.168.1.0/24 masquerade random\n" in sym
    assert "ct state new drop" not in cone  # the default lab's routers filter nothing


def test_switching_a_built_router_rewrites_only_its_masquerade() -> None:
    from higgs.lab.render import render_masquerade

    script = render_masquerade(default_plan(), "client_router", "symmetric")
    assert script.startswith(
        "flush chain ip hl_lab postrouting\n"
        'add rule ip hl_lab postrouting oifname "wan0" ip saddr 10.0.2.0/24 masquerade random\n'
        "flush chain ip hl_lab input\n"
        'add rule ip hl_lab input iifname "wan0" meta l4proto udp ct state new drop\n'
    )
    # ... and empties the full-cone chains (switching back from full_cone), adding no rule.
    rest = script.split("ct state new drop\n", 1)[1]
    assert "flush chain ip hl_lab cone_in\n" in rest
    assert "flush map ip hl_lab cone_ports\n" in rest
    assert "add rule" not in rest


def test_a_full_cone_router_sends_anyone_s_udp_to_a_mapped_port_back_in() -> None:
    from higgs.lab.render import render_masquerade

    script = render_masquerade(default_plan(), "client_router", "full_cone")
    assert 'postrouting oifname "wan0" ip saddr 10.0.2.0/24 masquerade\n' in script  # cone's
    assert (
        'add rule ip hl_lab cone_record oifname "wan0" ct original ip saddr 10.0.2.0/24'
        " meta l4proto udp update @cone_ports { udp sport timeout 120s : ct original ip saddr }\n"
    ) in script
    assert script.endswith(
        'add rule ip hl_lab cone_in iifname "wan0" ip daddr 203.0.113.20'
        " udp dport @cone_ports dnat ip to udp dport map @cone_ports\n"
    )
