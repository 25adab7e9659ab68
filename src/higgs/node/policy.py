"""Pure policy: the node's settings and what discovery saw, turned into a firewall plan.

No host access here (STYLE.md practice 15): the plan is frozen data that the osnet firewall
backend renders and applies. Unit-tested with plain values.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from higgs.node.settings import NodeSettings
from higgs.osnet.firewall.plan import (
    DnsRedirect,
    FirewallNames,
    IPNetwork,
    NodePolicy,
    PortRule,
)

__all__ = ["build_policy", "lan_prefixes", "own_addresses"]

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def lan_prefixes(addresses: Iterable[IPInterface]) -> tuple[IPNetwork, ...]:
    """The owner's local networks: the on-link prefixes of the host's own addresses, IPv4 and
    IPv6 (a home LAN's global /64 included: clients reach the internet, not the owner's PCs).
    Loopback and link-local are left out (the block list covers them whole)."""
    nets = {
        a.network
        for a in addresses
        if not a.ip.is_loopback and not a.ip.is_link_local and a.network.prefixlen < a.max_prefixlen
    }
    return tuple(sorted(nets, key=lambda n: (n.version, n)))


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
    tunnel_v6: ipaddress.IPv6Interface | None = None,
) -> NodePolicy:
    """``tunnel_v6`` (the node's own IPv6 tunnel address with the clients' prefix) turns on
    NAT66 out of ``uplink``; without it IPv6 from the tunnel is rejected."""
    tunnel = settings.node_address
    tunnel_ip6 = tunnel_v6.ip if tunnel_v6 is not None else None
    own = tuple(a for a in own_addresses(settings, host_addresses) if a != tunnel_ip6)
    tunnel_nets = {tunnel.network} | ({tunnel_v6.network} if tunnel_v6 is not None else set())
    lans = tuple(n for n in lan_prefixes(host_addresses) if n not in tunnel_nets)
    dns = None
    if settings.dns.enabled:
        dns = DnsRedirect(tunnel.ip, settings.dns.port, address_v6=tunnel_ip6)
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
        tunnel_v6=tunnel_v6,
        own_addresses=own,
        lan_prefixes=lans,
        dns=dns,
        allow_list=tuple(protection.allow),
        blocked_ports=blocked_ports,
        per_client_conn_limit=limits.connections_per_client or None,  # 0: unlimited
        per_client_new_conn_rate=limits.new_connections_per_s or None,
        per_client_new_conn_burst=limits.new_connections_burst,
        ipv6_mode="nat66" if tunnel_v6 is not None else "reject",
    )
