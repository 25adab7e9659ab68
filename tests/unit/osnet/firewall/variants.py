"""The plan variants every renderer is golden-tested and kernel-checked with."""

from __future__ import annotations

import ipaddress as ia

from higgs.osnet.firewall.plan import (
    DnsRedirect,
    Endpoint,
    FirewallNames,
    KillSwitchPolicy,
    NodePolicy,
    Plan,
    PortRule,
)

__all__ = ["VARIANTS"]


def _names(instance: str) -> FirewallNames:
    """Shaped like :class:`higgs.osnet.names.OwnedNames` makes them."""
    return FirewallNames(
        f"higgsnode_{instance}", f"HIGGSNODE_{instance.upper()}", f"higgs:node:{instance}"
    )


VARIANTS: dict[str, Plan] = {
    # What a node gets with nothing configured beyond its interfaces.
    "node_minimal": NodePolicy(
        names=_names("t"),
        tunnel_if="wg0",
        tunnel_v4=ia.IPv4Interface("10.66.0.1/24"),
        uplink_if="eth0",
    ),
    # Everything on: DNS interception both families, NAT66, an owner exception, a LAN.
    "node_full": NodePolicy(
        names=_names("node1"),
        tunnel_if="hg-wg.0",
        tunnel_v4=ia.IPv4Interface("10.66.0.1/24"),
        tunnel_v6=ia.IPv6Interface("fd66::1/64"),
        uplink_if="enp3s0.100",
        own_addresses=(ia.ip_address("192.168.1.10"), ia.ip_address("198.51.100.7")),
        lan_prefixes=(ia.ip_network("192.168.1.0/24"), ia.ip_network("198.51.100.0/28")),
        allow_list=(ia.ip_network("192.168.1.50/32"), ia.ip_network("fd00:1::/64")),
        blocked_ports=(PortRule("tcp", 25), PortRule("udp", 19)),
        dns=DnsRedirect(ia.IPv4Address("10.66.0.1"), 5353, ia.IPv6Address("fd66::1")),
        ipv6_mode="nat66",
        per_client_conn_limit=100,
        per_client_new_conn_rate=20,
        per_client_new_conn_burst=40,
    ),
    # NAT66 without an IPv6 forwarder: IPv6 DNS must be refused, not leaked.
    "node_nat66_dns4": NodePolicy(
        names=_names("n66"),
        tunnel_if="wg0",
        tunnel_v4=ia.IPv4Interface("10.66.0.1/24"),
        tunnel_v6=ia.IPv6Interface("fd66::1/64"),
        uplink_if="eth1",
        dns=DnsRedirect(ia.IPv4Address("10.66.0.1")),
        ipv6_mode="nat66",
    ),
    # The owner switched protections off (only LAN and own addresses stay blocked).
    "node_open": NodePolicy(
        names=_names("open"),
        tunnel_if="wg0",
        tunnel_v4=ia.IPv4Interface("10.77.0.1/24"),
        uplink_if="eth0",
        own_addresses=(ia.ip_address("203.0.113.9"),),
        block_ranges=(),
        blocked_ports=(),
        mss_clamp=False,
        per_client_conn_limit=None,
        per_client_new_conn_rate=None,
        allow_ping_node=False,
    ),
    "ks_strict": KillSwitchPolicy(
        names=_names("ks"),
        tunnel_if="hgc0",
        endpoints=(
            Endpoint(ia.ip_address("203.0.113.5"), 443, "tcp"),
            Endpoint(ia.ip_address("198.51.100.20"), 51820, "udp"),
            Endpoint(ia.ip_address("2001:db8::5"), 51820, "udp"),
        ),
        fwmark=0xCA6C,
        wg_listen_port=41414,
    ),
    "ks_lan": KillSwitchPolicy(
        names=_names("kslan"),
        tunnel_if="hgc0",
        endpoints=(Endpoint(ia.ip_address("203.0.113.5"), 443, "tcp"),),
        allow_loopback=False,
        allow_lan=True,
        allow_dhcp=False,
        block_ipv6_unless_tunnelled=False,
    ),
}
