"""The tc commands the node's shaping renders (argv lists; a real tc run is in the integration
test)."""

from __future__ import annotations

import ipaddress

from higgs.node.settings import load_node_settings
from higgs.node.shaping import plan_for
from higgs.osnet.shaping import client_slot, render_base, render_client_add, render_client_remove


def test_no_rates_no_commands() -> None:
    p = plan_for(load_node_settings(environ={}))
    assert render_base(p) == []
    assert render_client_add(p, "10.77.0.5/32") == []


def test_download_and_upload_trees_with_fair_client_classes() -> None:
    s = load_node_settings(
        environ={},
        overrides={
            "interface": "hn-t1",
            "max_clients": 3,
            "shaping": {"total_down_mbit": 20, "total_up_mbit": 8, "per_client_mbit": 5},
        },
    )
    p = plan_for(s)
    base = [" ".join(c) for c in render_base(p)]
    assert "tc qdisc replace dev hn-t1 handle ffff: ingress" in base
    assert (
        "tc filter replace dev hn-t1 parent ffff: protocol all prio 1 u32 match u32 0 0 "
        "action mirred egress redirect dev ifb-hn-t1" in base
    )
    assert (
        "tc class replace dev hn-t1 parent 1: classid 1:1 htb rate 20000kbit ceil 20000kbit" in base
    )
    assert (
        "tc class replace dev ifb-hn-t1 parent 1: classid 1:1 htb rate 8000kbit ceil 8000kbit"
        in base
    )
    add = [" ".join(c) for c in render_client_add(p, "10.77.0.5/32")]
    assert add == [
        "tc class replace dev hn-t1 parent 1:1 classid 1:15 htb rate 5000kbit ceil 5000kbit",
        "tc filter replace dev hn-t1 parent 1: protocol ip prio 1 handle 800::15 u32 "
        "match ip dst 10.77.0.5/32 flowid 1:15",
        "tc class replace dev ifb-hn-t1 parent 1:1 classid 1:15 htb rate 2000kbit ceil 5000kbit",
        "tc filter replace dev ifb-hn-t1 parent 1: protocol ip prio 1 handle 800::15 u32 "
        "match ip src 10.77.0.5/32 flowid 1:15",
    ]
    remove = [" ".join(c) for c in render_client_remove(p, "10.77.0.5/32")]
    assert remove[0] == "tc filter del dev hn-t1 parent 1: protocol ip prio 1 handle 800::15 u32"
    assert remove[1] == "tc class del dev hn-t1 classid 1:15"


def test_addresses_outside_or_beyond_the_filter_ids_share_the_default_class() -> None:
    s = load_node_settings(
        environ={}, overrides={"tunnel_subnet": "10.64.0.0/16", "shaping": {"per_client_mbit": 1}}
    )
    p = plan_for(s)
    assert client_slot(p, "10.64.0.2") == 0x12
    assert client_slot(p, "10.64.15.239") == 0xFFF
    assert client_slot(p, "10.64.15.240") is None
    assert client_slot(p, "10.65.0.2") is None
    assert render_client_add(p, "10.99.0.2/32") == []
    assert ipaddress.ip_network("10.64.0.0/16") == p.tunnel_net
