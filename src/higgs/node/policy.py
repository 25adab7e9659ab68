"""Pure policy: the node's settings and what discovery saw, turned into a firewall plan.

No host access here (STYLE.md practice 15): the plan is frozen data that the osnet firewall
backend renders and applies. Unit-tested with plain values.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from higgs.node.settings import NodeSettings
from higgs.osnet.firewall.plan import DnsRedirect, FirewallNames, NodePolicy, PortRule

__all__ = ["build_policy", "lan_prefixes", "own_addresses"]

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def lan_prefixes(addresses: Iterable[IPInterface]) -> tuple[ipaddress.IPv4Network, ...]:
    """The owner's local networks: the prefixes of the host's own non-loopback addresses."""
    nets = {
        a.network
        for a in addresses
        if isinstance(a, ipaddress.IPv4Interface)
        and not a.ip.is_loopback
        and a.network.prefixlen < 32
    }
    return tuple(sorted(nets))


def own_addresses(
    settings: NodeSettings, host_addresses: Sequence[IPInterface]
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    """The node's own addresses clients must not reach (the tunnel address stays reachable
    for DNS and ping; the firewall plan handles it separately)."""
    tunnel = settings.node_address
    return tuple(
        a.ip
        for a in host_addresses
        if a.ip != tunnel.ip and not a.ip.is_loopback and not a.ip.is_link_local
    )


def build_policy(
    settings: NodeSettings,
    *,
    names: FirewallNames,
    uplink: str,
    host_addresses: Sequence[IPInterface],
) -> NodePolicy:
    tunnel = settings.node_address
    own = own_addresses(settings, host_addresses)
    lans = tuple(n for n in lan_prefixes(host_addresses) if n != tunnel.network)
    dns = DnsRedirect(tunnel.ip, settings.dns.port) if settings.dns.enabled else None
    limits = settings.limits
    protection = settings.protection
    blocked_ports = tuple(PortRule("tcp", p) for p in protection.blocked_tcp_ports) + tuple(
        PortRule("udp", p) for p in protection.blocked_udp_ports
    )
    return NodePolicy(
        names=names,
        tunnel_if=settings.interface,
        tunnel_v4=tunnel,
        uplink_if=uplink,
        own_addresses=own,
        lan_prefixes=lans,
        dns=dns,
        allow_list=tuple(protection.allow),
        blocked_ports=blocked_ports,
        per_client_conn_limit=limits.connections_per_client or None,  # 0: unlimited
        per_client_new_conn_rate=limits.new_connections_per_s or None,
        per_client_new_conn_burst=limits.new_connections_burst,
    )
