"""Cutting the node's established flows that a new block list forbids.

The node's forward chain accepts established flows before owner protection (one rule per
packet instead of five: docs/benchmarks.md, "Direct mode"). So that a destination the owner
blocks stops at once for connections already open to it, every apply of a node policy is
followed by deleting the conntrack entries of flows from the tunnel's subnet to a blocked
destination that the allow list does not grant. Their next packet is then a new flow, which
owner protection refuses. The apply comes first: before it, the old rules would let the next
packet make a new entry, which would then be established under the new rules.
"""

from __future__ import annotations

import bisect
import ipaddress
import logging
from collections.abc import Iterable

from higgs.osnet import conntrack
from higgs.osnet.runner import Runner

from .plan import IPAddress, IPNetwork, NodePolicy

__all__ = ["cut_blocked_flows", "forbidden_destinations"]

log = logging.getLogger(__name__)


def _subtract(nets: Iterable[IPNetwork], holes: Iterable[IPNetwork]) -> list[IPNetwork]:
    """``nets`` without the addresses of ``holes`` (same address family), as prefixes."""
    out: list[IPNetwork] = list(nets)
    for hole in holes:
        nxt: list[IPNetwork] = []
        for net in out:
            if net.version != hole.version or not net.overlaps(hole):
                nxt.append(net)
            elif not hole.supernet_of(net):  # type: ignore[arg-type]
                nxt += net.address_exclude(hole)  # type: ignore[arg-type]
        out = nxt
    return out


def forbidden_destinations(plan: NodePolicy, version: int) -> list[IPNetwork]:
    """Where the policy refuses flows from the tunnel (blocked, not allowed), for IP
    ``version``, less the tunnel's own subnet: flows to the node's tunnel address are its
    own services (DNS, ping; the input chain decides), and flows to other clients are never
    established (the forward chain drops anything new toward the tunnel)."""
    if version == 4:
        blocked: tuple[IPNetwork, ...] = plan.blocked_v4
        holes: list[IPNetwork] = [*plan.allow_v4, plan.tunnel_subnet_v4]
    else:
        blocked = plan.blocked_v6
        holes = list(plan.allow_v6)
        if plan.tunnel_subnet_v6 is not None:
            holes.append(plan.tunnel_subnet_v6)
    return sorted(_subtract(blocked, holes), key=lambda n: int(n.network_address))


def _matcher(nets: list[IPNetwork]) -> tuple[list[int], list[int]]:
    starts = [int(n.network_address) for n in nets]
    ends = [int(n.broadcast_address) for n in nets]
    return starts, ends


def _inside(addr: IPAddress, starts: list[int], ends: list[int]) -> bool:
    # The prefixes are disjoint and sorted: the only candidate is the last one starting at
    # or below the address.
    i = bisect.bisect_right(starts, int(addr)) - 1
    return i >= 0 and int(addr) <= ends[i]


def cut_blocked_flows(runner: Runner, plan: NodePolicy) -> int:
    """Deletes the conntrack entries of flows from the tunnel to destinations ``plan``
    forbids; returns how many went. Raises OsnetError when ``conntrack`` fails."""
    subnets: list[tuple[int, ipaddress.IPv4Network | ipaddress.IPv6Network]] = [
        (4, plan.tunnel_subnet_v4)
    ]
    if plan.nat66 and plan.tunnel_subnet_v6 is not None:
        subnets.append((6, plan.tunnel_subnet_v6))
    cut = 0
    for version, subnet in subnets:
        starts, ends = _matcher(forbidden_destinations(plan, version))
        pairs = conntrack.original_pairs(runner, subnet)
        for src, dst in sorted(p for p in pairs if _inside(p[1], starts, ends)):
            cut += conntrack.delete(runner, ["-f", f"ipv{version}", "-s", str(src), "-d", str(dst)])
    if cut:
        log.info("cut %d established flow(s) to destinations now blocked", cut)
    return cut
