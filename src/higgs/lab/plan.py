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
from ipaddress import IPv4Address, IPv4Interface

__all__ = [
    "HOST_ROLES",
    "ROUTER_ROLES",
    "Bridge",
    "HostPlan",
    "LabPlan",
    "Link",
    "default_plan",
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


@dataclass(frozen=True)
class Link:
    """One veth pair: ``a_if`` in host ``a``, ``b_if`` in host ``b``."""

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

    def address(self, ifname: str | None = None) -> IPv4Interface:
        """The address on ``ifname``, or the host's first (primary) address."""
        for name, addr in self.addresses:
            if ifname is None or name == ifname:
                return addr
        raise KeyError(f"{self.role} has no address on {ifname}")


@dataclass(frozen=True)
class LabPlan:
    hosts: dict[str, HostPlan]
    links: tuple[Link, ...]
    bridges: tuple[Bridge, ...] = field(default_factory=tuple)

    def host(self, role: str) -> HostPlan:
        try:
            return self.hosts[role]
        except KeyError:
            raise KeyError(f"no host {role!r} in the lab plan") from None


def _if(text: str) -> IPv4Interface:
    return IPv4Interface(text)


def default_plan(*, clients: int = 1) -> LabPlan:
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
        ),
        "client": HostPlan(
            "client", (("eth0", _if("10.0.2.10/24")),), gateway=IPv4Address("10.0.2.1")
        ),
    }
    links: tuple[Link, ...] = (
        Link("internet", "eth0", "core", "to-inet"),
        Link("server", "eth0", "core", "to-srv"),
        Link("home_router", "wan0", "core", "to-home"),
        Link("client_router", "wan0", "core", "to-cli"),
        Link("node", "eth0", "home_router", "p-node"),
        Link("printer", "eth0", "home_router", "p-prn"),
    )
    bridges: tuple[Bridge, ...] = (Bridge("home_router", "lan0", ("p-node", "p-prn")),)
    if clients == 1:
        links += (Link("client", "eth0", "client_router", "lan0"),)
    else:
        ports = []
        for n in range(1, clients + 1):
            role = "client" if n == 1 else f"client{n}"
            if n > 1:
                hosts[role] = HostPlan(
                    role, (("eth0", _if(f"10.0.2.{9 + n}/24")),), gateway=IPv4Address("10.0.2.1")
                )
            links += (Link(role, "eth0", "client_router", f"p-c{n}"),)
            ports.append(f"p-c{n}")
        bridges += (Bridge("client_router", "lan0", tuple(ports)),)
    return LabPlan(hosts=hosts, links=links, bridges=bridges)
