"""What the firewall should look like, as frozen data: no host access, no rendering.

A plan is built by the node's (or client's) policy code and handed to a backend
(:mod:`.nft` or :mod:`.iptables`), which renders and applies it. Plans validate themselves on
construction, so a bad value (an interface name with a quote, NAT66 without an IPv6 tunnel
subnet) is a :class:`FirewallPlanError` naming the field before anything touches the host.

Two plans exist:

- :class:`NodePolicy` — the exit node: forward tunnel->uplink with owner protection, masquerade
  on the *uplink* (never on the tunnel interface), DNS interception, MSS clamping, per-client
  limits, IPv6 NAT66 or reject.
- :class:`KillSwitchPolicy` — the client: nothing leaves except through the tunnel and to the
  server/relay/node endpoints.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeAlias

from higgs.common.errors import HiggsError

__all__ = [
    "DEFAULT_BLOCKED_PORTS",
    "DEFAULT_BLOCK_RANGES",
    "LAN_RANGES",
    "DnsRedirect",
    "Endpoint",
    "FirewallNames",
    "FirewallPlanError",
    "IPAddress",
    "IPNetwork",
    "KillSwitchPolicy",
    "NodePolicy",
    "Plan",
    "PortRule",
    "protected_from",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
L4 = Literal["tcp", "udp"]


class FirewallPlanError(HiggsError):
    """A firewall plan holds a value no backend could apply; the message names the field."""


def _nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# Destinations a stranger must never reach through the owner's connection (DESIGN.md §6).
# Documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) are left
# out on purpose: they are not routed on the internet, and test labs use them as "the internet".
DEFAULT_BLOCK_RANGES: tuple[IPNetwork, ...] = _nets(
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # RFC 1918
    "100.64.0.0/10",  # CGNAT (RFC 6598)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, including the 169.254.169.254 metadata service
    "172.16.0.0/12",  # RFC 1918
    "192.0.0.0/24",  # IETF protocol assignments
    "192.168.0.0/16",  # RFC 1918
    "198.18.0.0/15",  # benchmarking, often used for appliances' internal nets
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved and limited broadcast
    "::/127",  # unspecified and loopback
    "::ffff:0:0/96",  # IPv4-mapped: would sidestep the IPv4 list
    "64:ff9b:1::/48",  # local-use NAT64
    "100::/64",  # discard-only
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local
    "fec0::/10",  # deprecated site-local
    "ff00::/8",  # multicast
)

# What a client's kill switch lets through when the user allows their LAN.
LAN_RANGES: tuple[IPNetwork, ...] = _nets(
    "10.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "255.255.255.255/32",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
)

# A Linux interface name: at most 15 bytes; no whitespace, '/', ':' or quotes (a quote would let
# a name escape its string in the rules), no '+' or '*' (wildcards to iptables and nft), and no
# leading '-' (it would read as an option).
_IFNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,14}$")
_TABLE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# iptables chain names are limited to 28 characters; ours are `<prefix>-<ROLE>` (ROLE: 2-3).
_CHAIN_PREFIX = re.compile(r"^[A-Z][A-Z0-9_]{0,23}$")
_COMMENT = re.compile(r"^[a-z0-9][a-z0-9:_.\-]{0,63}$")


class _Owned(Protocol):
    """What :class:`higgs.osnet.names.OwnedNames` provides (kept structural: plans are data)."""

    @property
    def nft_table(self) -> str: ...
    @property
    def chain_prefix(self) -> str: ...
    @property
    def comment(self) -> str: ...


@dataclass(frozen=True, slots=True)
class FirewallNames:
    """The names everything we add carries, so removal and the sweep find exactly ours."""

    table: str  # `table inet <table>`
    chain_prefix: str  # iptables chains `<chain_prefix>-FWD`, `-NAT`, ...
    comment: str  # the marker on our jumps in the host's built-in chains

    def __post_init__(self) -> None:
        if not _TABLE.match(self.table):
            raise FirewallPlanError(f"names.table: {self.table!r} is not a valid table name")
        if not _CHAIN_PREFIX.match(self.chain_prefix):
            raise FirewallPlanError(
                f"names.chain_prefix: {self.chain_prefix!r} must be 1-24 of A-Z 0-9 _"
            )
        if not _COMMENT.match(self.comment):
            raise FirewallPlanError(f"names.comment: {self.comment!r} is not a valid marker")

    @classmethod
    def of(cls, owned: _Owned, part: str = "") -> FirewallNames:
        """The names of an owner's firewall; ``part`` (e.g. "ks") keeps a second rule set of
        the same owner apart, since applying a plan replaces the whole table."""
        if not part:
            return cls(owned.nft_table, owned.chain_prefix, owned.comment)
        return cls(
            f"{owned.nft_table}_{part}",
            f"{owned.chain_prefix}_{part.upper()}",
            f"{owned.comment}:{part}",
        )

    def chain(self, role: str) -> str:
        return f"{self.chain_prefix}-{role}"


def _check_ifname(field_name: str, ifname: str) -> None:
    if not _IFNAME.match(ifname) or ifname in (".", ".."):
        raise FirewallPlanError(
            f"{field_name}: {ifname!r} is not a valid interface name "
            "(1-15 of letters, digits, '_', '-', '.', not starting with '-')"
        )


def _check_port(field_name: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise FirewallPlanError(f"{field_name}: port {port} is outside 1-65535")


def _v4(nets: tuple[IPNetwork, ...]) -> tuple[ipaddress.IPv4Network, ...]:
    return tuple(ipaddress.collapse_addresses(n for n in nets if n.version == 4))


def _v6(nets: tuple[IPNetwork, ...]) -> tuple[ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.collapse_addresses(n for n in nets if n.version == 6))


def _host(addr: IPAddress) -> IPNetwork:
    return ipaddress.ip_network(addr)


def protected_from(
    interfaces: Iterable[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
) -> tuple[tuple[IPAddress, ...], tuple[IPNetwork, ...]]:
    """(own_addresses, lan_prefixes) for a NodePolicy, from the node's interface addresses
    (e.g. ``discovery.Uplink.addresses`` plus those of any other LAN link): every address of
    the node, and every on-link prefix, which is the owner's LAN."""
    own: list[IPAddress] = []
    lan: list[IPNetwork] = []
    for iface in interfaces:
        if iface.ip.is_loopback:
            continue
        own.append(iface.ip)
        if not iface.ip.is_link_local and iface.network.num_addresses > 1:
            lan.append(iface.network)
    return tuple(dict.fromkeys(own)), tuple(dict.fromkeys(lan))


@dataclass(frozen=True, slots=True)
class PortRule:
    """A destination port blocked for tunnel clients (outbound SMTP by default)."""

    protocol: L4
    port: int

    def __post_init__(self) -> None:
        if self.protocol not in ("tcp", "udp"):
            raise FirewallPlanError(f"blocked_ports: protocol {self.protocol!r} is not tcp/udp")
        _check_port("blocked_ports", self.port)


DEFAULT_BLOCKED_PORTS: tuple[PortRule, ...] = (PortRule("tcp", 25),)


@dataclass(frozen=True, slots=True)
class DnsRedirect:
    """The node's DNS forwarder: every tunnel query to port 53 of any address lands here."""

    address_v4: ipaddress.IPv4Address
    port: int = 53
    # Only with NAT66; without it, IPv6 queries to port 53 are rejected rather than leaked.
    address_v6: ipaddress.IPv6Address | None = None

    def __post_init__(self) -> None:
        _check_port("dns.port", self.port)


@dataclass(frozen=True, slots=True)
class NodePolicy:
    """The exit node's forwarding, NAT and owner protection (DESIGN.md §6 defaults)."""

    names: FirewallNames
    tunnel_if: str
    # The node's own tunnel address with the clients' prefix, e.g. 10.66.0.1/24.
    tunnel_v4: ipaddress.IPv4Interface
    uplink_if: str
    tunnel_v6: ipaddress.IPv6Interface | None = None
    # Every address of the node itself (uplink and others): unreachable from the tunnel.
    own_addresses: tuple[IPAddress, ...] = ()
    # The owner's LAN prefixes (those of the uplink and any other local link).
    lan_prefixes: tuple[IPNetwork, ...] = ()
    block_ranges: tuple[IPNetwork, ...] = DEFAULT_BLOCK_RANGES
    # Exceptions the owner grants: reachable even when inside a blocked range.
    allow_list: tuple[IPNetwork, ...] = ()
    blocked_ports: tuple[PortRule, ...] = DEFAULT_BLOCKED_PORTS
    dns: DnsRedirect | None = None
    mss_clamp: bool = True
    # Concurrent connections per client address (None: unlimited).
    per_client_conn_limit: int | None = 512
    # New connections per second per client address, and the burst allowed above it.
    per_client_new_conn_rate: int | None = 50
    per_client_new_conn_burst: int = 100
    ipv6_mode: Literal["nat66", "reject"] = "reject"
    # Clients may ping the node's tunnel address (latency in `higgsvpn status`, MTU probes).
    allow_ping_node: bool = True

    def __post_init__(self) -> None:
        _check_ifname("tunnel_if", self.tunnel_if)
        _check_ifname("uplink_if", self.uplink_if)
        if self.tunnel_if == self.uplink_if:
            raise FirewallPlanError("uplink_if: must differ from tunnel_if")
        if self.ipv6_mode not in ("nat66", "reject"):
            raise FirewallPlanError(f"ipv6_mode: {self.ipv6_mode!r} is not 'nat66' or 'reject'")
        if self.ipv6_mode == "nat66" and self.tunnel_v6 is None:
            raise FirewallPlanError("ipv6_mode: 'nat66' needs tunnel_v6 (the tunnel's IPv6 prefix)")
        for label, limit in (
            ("per_client_conn_limit", self.per_client_conn_limit),
            ("per_client_new_conn_rate", self.per_client_new_conn_rate),
        ):
            if limit is not None and limit < 1:
                raise FirewallPlanError(f"{label}: must be at least 1 (or unset), got {limit}")
        if self.per_client_new_conn_burst < 1:
            raise FirewallPlanError("per_client_new_conn_burst: must be at least 1")
        if self.dns is not None and self.dns.address_v6 is not None and self.ipv6_mode != "nat66":
            raise FirewallPlanError("dns.address_v6: only meaningful with ipv6_mode 'nat66'")

    @property
    def tunnel_subnet_v4(self) -> ipaddress.IPv4Network:
        return self.tunnel_v4.network

    @property
    def tunnel_subnet_v6(self) -> ipaddress.IPv6Network | None:
        return None if self.tunnel_v6 is None else self.tunnel_v6.network

    @property
    def nat66(self) -> bool:
        return self.ipv6_mode == "nat66"

    def _blocked(self) -> tuple[IPNetwork, ...]:
        own = tuple(_host(a) for a in self.own_addresses)
        return self.block_ranges + self.lan_prefixes + own

    @property
    def blocked_v4(self) -> tuple[ipaddress.IPv4Network, ...]:
        """Every IPv4 destination clients may not reach, merged into the fewest prefixes."""
        return _v4(self._blocked())

    @property
    def blocked_v6(self) -> tuple[ipaddress.IPv6Network, ...]:
        return _v6(self._blocked())

    @property
    def allow_v4(self) -> tuple[ipaddress.IPv4Network, ...]:
        return _v4(self.allow_list)

    @property
    def allow_v6(self) -> tuple[ipaddress.IPv6Network, ...]:
        return _v6(self.allow_list)

    def with_uplink(
        self, uplink_if: str, own_addresses: tuple[IPAddress, ...] | None = None
    ) -> NodePolicy:
        """The same policy moved to another uplink (the default route changed)."""
        if own_addresses is None:
            return dataclasses.replace(self, uplink_if=uplink_if)
        return dataclasses.replace(self, uplink_if=uplink_if, own_addresses=own_addresses)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the client may still send outside the tunnel: the server, a relay, the node."""

    address: IPAddress
    port: int
    protocol: L4 = "udp"

    def __post_init__(self) -> None:
        if self.protocol not in ("tcp", "udp"):
            raise FirewallPlanError(f"endpoints: protocol {self.protocol!r} is not tcp/udp")
        _check_port("endpoints", self.port)


@dataclass(frozen=True, slots=True)
class KillSwitchPolicy:
    """The client's kill switch: only the tunnel and the listed endpoints leave the machine."""

    names: FirewallNames
    tunnel_if: str
    endpoints: tuple[Endpoint, ...] = ()
    # wg-quick-style fwmark carried by WireGuard's own encrypted packets (None: not used).
    fwmark: int | None = None
    # WireGuard's own UDP port. With it, the datagrams between this port and a UDP endpoint
    # are not tracked by conntrack and are let in by their addresses and ports alone: every
    # byte of the tunnel crosses the kill switch twice (inside and as a datagram), and
    # tracking the outer copy too cost about 0.3 CPU s per GB (docs/benchmarks.md). None:
    # tracked and let in as established, like any other answer.
    wg_listen_port: int | None = None
    allow_loopback: bool = True
    allow_lan: bool = False
    # DHCP keeps the machine's lease (and so the tunnel's underlay) alive.
    allow_dhcp: bool = True
    block_ipv6_unless_tunnelled: bool = True
    lan_ranges: tuple[IPNetwork, ...] = field(default=LAN_RANGES)

    def __post_init__(self) -> None:
        _check_ifname("tunnel_if", self.tunnel_if)
        if self.fwmark is not None and not 0 < self.fwmark < 2**32:
            raise FirewallPlanError(f"fwmark: {self.fwmark} is outside 1-0xffffffff")
        if self.wg_listen_port is not None:
            _check_port("wg_listen_port", self.wg_listen_port)

    @property
    def lan_v4(self) -> tuple[ipaddress.IPv4Network, ...]:
        return _v4(self.lan_ranges)

    @property
    def lan_v6(self) -> tuple[ipaddress.IPv6Network, ...]:
        return _v6(self.lan_ranges)

    @property
    def wireguard_endpoints(self) -> tuple[Endpoint, ...]:
        """The UDP endpoints whose datagrams to and from :attr:`wg_listen_port` bypass
        conntrack (none without the port)."""
        if self.wg_listen_port is None:
            return ()
        return tuple(ep for ep in self.endpoints if ep.protocol == "udp")

    @property
    def needs_neighbour_discovery(self) -> bool:
        """IPv6 on the link must resolve its neighbours: for the LAN, for unblocked IPv6, or
        to reach an IPv6 endpoint (a UDP relay on an IPv6 address) while IPv6 is blocked."""
        return (
            self.allow_lan
            or not self.block_ipv6_unless_tunnelled
            or any(ipaddress.ip_address(ep.address).version == 6 for ep in self.endpoints)
        )


Plan: TypeAlias = NodePolicy | KillSwitchPolicy
