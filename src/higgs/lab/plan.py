"""The lab's topology and address plan, as plain data (no I/O).

```
                         core (router, ip_forward)
   internet 192.0.2.10 ───┤ 192.0.2.1
   server 198.51.100.10 ──┤ 198.51.100.1
   home_router 203.0.113.10 ─┤ 203.0.113.1    (NAT)  LAN 192.168.1.0/24: node .10, printer .20
   client_router 203.0.113.20 ┤ 203.0.113.17  (NAT)  LAN 10.0.2.0/24:    client .10
```
Public side in documentation ranges (RFC 5737), private ranges only inside the two LANs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, IPv6Network
from typing import Literal

__all__ = [
    "HOST_ROLES",
    "NAT_TYPES",
    "ROUTER_ROLES",
    "Bridge",
    "Cable",
    "HostPlan",
    "LabPlan",
    "NatType",
    "V6HostPlan",
    "default_plan",
    "ipv6_plan",
]

HOST_ROLES = (
    "core",
    "internet",
    "server",
    "home_router",
    "node",
    "printer",
    "client_router",
    "client",
)
ROUTER_ROLES = ("core", "home_router", "client_router")

NatType = Literal["cone", "symmetric", "full_cone"]
NAT_TYPES: tuple[NatType, ...] = ("cone", "symmetric")
"""How a NAT router maps its LAN's UDP (issue 12's matrix):

- ``cone``: endpoint-independent mapping: Linux masquerade keeps the source port, so one LAN
  socket has one public ``ip:port`` toward every destination; the filter is the conntrack's
  (only answers to what went out pass), as on most home routers.
- ``symmetric``: ``masquerade random``: every new destination gets a new random public port,
  so the address the relay saw is useless to anyone else (as behind many carrier-grade NATs).
- ``full_cone`` (not in the matrix; ``Lab.set_nat`` only): ``cone``'s mapping with
  endpoint-independent *filtering*: once a LAN socket sent out, UDP from anyone to its public
  port reaches it (RFC 4787 "full cone", as many consumer routers and phone carriers do).
  This is what lets the node steer an official WireGuard app off the relay (issue 12).
"""


@dataclass(frozen=True)
class Cable:
    """A cable: one veth pair, ``a_if`` in host ``a``, ``b_if`` in host ``b``."""

    a: str
    a_if: str
    b: str
    b_if: str


@dataclass(frozen=True)
class Bridge:
    """A bridge inside one host, with the given ports enslaved."""

    host: str
    name: str
    ports: tuple[str, ...]


@dataclass(frozen=True)
class HostPlan:
    """What one host gets: addresses per interface, a default gateway, router or not."""

    role: str
    addresses: tuple[tuple[str, IPv4Interface], ...]
    gateway: IPv4Address | None = None
    router: bool = False
    # For NAT routers: the interface towards the internet that LAN traffic is masqueraded to.
    wan_if: str | None = None
    lan_net: str | None = None
    nat: NatType = "cone"

    def address(self, ifname: str | None = None) -> IPv4Interface:
        """The address on ``ifname``, or the host's first (primary) address."""
        for name, addr in self.addresses:
            if ifname is None or name == ifname:
                return addr
        raise KeyError(f"{self.role} has no address on {ifname}")


@dataclass(frozen=True)
class LabPlan:
    hosts: dict[str, HostPlan]
    cables: tuple[Cable, ...]
    bridges: tuple[Bridge, ...] = field(default_factory=tuple)

    def host(self, role: str) -> HostPlan:
        try:
            return self.hosts[role]
        except KeyError:
            raise KeyError(f"no host {role!r} in the lab plan") from None


def _if(text: str) -> IPv4Interface:
    return IPv4Interface(text)


def default_plan(
    *, clients: int = 1, home_nat: NatType = "cone", client_nat: NatType = "cone"
) -> LabPlan:
    """The standard lab: a routed core, two public hosts and two NATed sites.

    With ``clients`` > 1 the client router's LAN is a bridge with that many client hosts:
    ``client`` (10.0.2.10), ``client2`` (10.0.2.11), ... -- e.g. to check that two clients of
    one node each get a fair share.
    """
    if not 1 <= clients <= 9:
        raise ValueError(f"clients must be 1..9, not {clients}")
    hosts = {
        "core": HostPlan(
            "core",
            (
                ("to-inet", _if("192.0.2.1/24")),
                ("to-srv", _if("198.51.100.1/24")),
                ("to-home", _if("203.0.113.1/28")),
                ("to-cli", _if("203.0.113.17/28")),
            ),
            router=True,
        ),
        "internet": HostPlan(
            "internet", (("eth0", _if("192.0.2.10/24")),), gateway=IPv4Address("192.0.2.1")
        ),
        "server": HostPlan(
            "server", (("eth0", _if("198.51.100.10/24")),), gateway=IPv4Address("198.51.100.1")
        ),
        "home_router": HostPlan(
            "home_router",
            (("wan0", _if("203.0.113.10/28")), ("lan0", _if("192.168.1.1/24"))),
            gateway=IPv4Address("203.0.113.1"),
            router=True,
            wan_if="wan0",
            lan_net="192.168.1.0/24",
            nat=home_nat,
        ),
        "node": HostPlan(
            "node", (("eth0", _if("192.168.1.10/24")),), gateway=IPv4Address("192.168.1.1")
        ),
        "printer": HostPlan(
            "printer", (("eth0", _if("192.168.1.20/24")),), gateway=IPv4Address("192.168.1.1")
        ),
        "client_router": HostPlan(
            "client_router",
            (("wan0", _if("203.0.113.20/28")), ("lan0", _if("10.0.2.1/24"))),
            gateway=IPv4Address("203.0.113.17"),
            router=True,
            wan_if="wan0",
            lan_net="10.0.2.0/24",
            nat=client_nat,
        ),
        "client": HostPlan(
            "client", (("eth0", _if("10.0.2.10/24")),), gateway=IPv4Address("10.0.2.1")
        ),
    }
    cables: tuple[Cable, ...] = (
        Cable("internet", "eth0", "core", "to-inet"),
        Cable("server", "eth0", "core", "to-srv"),
        Cable("home_router", "wan0", "core", "to-home"),
        Cable("client_router", "wan0", "core", "to-cli"),
        Cable("node", "eth0", "home_router", "p-node"),
        Cable("printer", "eth0", "home_router", "p-prn"),
    )
    bridges: tuple[Bridge, ...] = (Bridge("home_router", "lan0", ("p-node", "p-prn")),)
    if clients == 1:
        cables += (Cable("client", "eth0", "client_router", "lan0"),)
    else:
        ports = []
        for n in range(1, clients + 1):
            role = "client" if n == 1 else f"client{n}"
            if n > 1:
                hosts[role] = HostPlan(
                    role, (("eth0", _if(f"10.0.2.{9 + n}/24")),), gateway=IPv4Address("10.0.2.1")
                )
            cables += (Cable(role, "eth0", "client_router", f"p-c{n}"),)
            ports.append(f"p-c{n}")
        bridges += (Bridge("client_router", "lan0", tuple(ports)),)
    return LabPlan(hosts=hosts, cables=cables, bridges=bridges)


@dataclass(frozen=True)
class V6HostPlan:
    """A host's IPv6 side (only with ``Lab(ipv6=True)``): addresses, default gateway, and
    static routes (prefix, via) for the core."""

    addresses: tuple[tuple[str, IPv6Interface], ...]
    gateway: IPv6Address | None = None
    routes: tuple[tuple[IPv6Network, IPv6Address], ...] = ()

    def address(self, ifname: str | None = None) -> IPv6Interface:
        for name, addr in self.addresses:
            if ifname is None or name == ifname:
                return addr
        raise KeyError(f"no IPv6 address on {ifname}")


def ipv6_plan(plan: LabPlan) -> dict[str, V6HostPlan]:
    """IPv6 for ``plan``'s hosts, in the documentation prefix 2001:db8::/32 (RFC 3849).

    The public side gets one /64 per core cable; both sites get a *global* (routed, not NATed)
    /64 on their LAN, as an ISP delegates it: the home LAN 2001:db8:1::/64 (node ::10, printer
    ::20), the client LAN 2001:db8:2::/64 (client ::10, client2 ::11, ...). The core routes the
    two LAN prefixes to the routers' WAN addresses.
    """

    def i6(text: str) -> IPv6Interface:
        return IPv6Interface(text)

    def a6(text: str) -> IPv6Address:
        return IPv6Address(text)

    out = {
        "core": V6HostPlan(
            (
                ("to-inet", i6("2001:db8:0:2::1/64")),
                ("to-srv", i6("2001:db8:0:51::1/64")),
                ("to-home", i6("2001:db8:0:113::1/64")),
                ("to-cli", i6("2001:db8:0:117::1/64")),
            ),
            routes=(
                (IPv6Network("2001:db8:1::/64"), a6("2001:db8:0:113::10")),
                (IPv6Network("2001:db8:2::/64"), a6("2001:db8:0:117::20")),
            ),
        ),
        "internet": V6HostPlan((("eth0", i6("2001:db8:0:2::10/64")),), a6("2001:db8:0:2::1")),
        "server": V6HostPlan((("eth0", i6("2001:db8:0:51::10/64")),), a6("2001:db8:0:51::1")),
        "home_router": V6HostPlan(
            (("wan0", i6("2001:db8:0:113::10/64")), ("lan0", i6("2001:db8:1::1/64"))),
            a6("2001:db8:0:113::1"),
        ),
        "node": V6HostPlan((("eth0", i6("2001:db8:1::10/64")),), a6("2001:db8:1::1")),
        "printer": V6HostPlan((("eth0", i6("2001:db8:1::20/64")),), a6("2001:db8:1::1")),
        "client_router": V6HostPlan(
            (("wan0", i6("2001:db8:0:117::20/64")), ("lan0", i6("2001:db8:2::1/64"))),
            a6("2001:db8:0:117::1"),
        ),
    }
    for role, host in plan.hosts.items():
        if role == "client" or (role.startswith("client") and role[6:].isdigit()):
            n = 1 if role == "client" else int(role[6:])
            ifname = host.addresses[0][0]
            out[role] = V6HostPlan(((ifname, i6(f"2001:db8:2::{9 + n}/64")),), a6("2001:db8:2::1"))
    return {role: v6 for role, v6 in out.items() if role in plan.hosts}
