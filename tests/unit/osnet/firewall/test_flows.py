"""Which destinations' established flows the node cuts after an apply."""

from __future__ import annotations

import ipaddress as ia
import itertools

from higgs.osnet.firewall.flows import forbidden_destinations
from higgs.osnet.firewall.plan import NodePolicy

from .variants import VARIANTS

_NODE = VARIANTS["node_full"]
assert isinstance(_NODE, NodePolicy)
NODE: NodePolicy = _NODE


def _inside(addr: str, nets: list[ia.IPv4Network | ia.IPv6Network]) -> bool:
    return any(ia.ip_address(addr) in n for n in nets)


def test_blocked_less_the_allow_list_and_the_tunnel() -> None:
    v4 = forbidden_destinations(NODE, 4)
    assert _inside("192.168.1.20", v4)  # the owner's LAN
    assert _inside("192.168.1.10", v4)  # the node itself
    assert _inside("10.1.2.3", v4)  # RFC 1918 elsewhere
    assert not _inside("192.168.1.50", v4)  # the owner's exception
    assert not _inside("10.66.0.1", v4)  # the node's own services on the tunnel
    assert not _inside("192.0.2.1", v4)  # the internet
    v6 = forbidden_destinations(NODE, 6)
    assert _inside("fd00:2::1", v6)
    assert not _inside("fd00:1::1", v6)
    assert not _inside("fd66::1", v6)
    # Disjoint and sorted: what the lookup relies on.
    for a, b in itertools.pairwise(v4):
        assert int(a.broadcast_address) < int(b.network_address)
