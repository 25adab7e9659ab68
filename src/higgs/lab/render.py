"""Turns a lab plan into ``ip -batch`` text and nftables scripts (pure, golden-testable).

Building the lab with a handful of batches instead of one ``ip`` call per step is what makes
it take a fraction of a second.
"""

from __future__ import annotations

from .names import RunNames
from .plan import LabPlan, NatType, V6HostPlan

__all__ = [
    "NAT_TABLE",
    "render_dnat_udp",
    "render_host_batch",
    "render_ipv6_batch",
    "render_masquerade",
    "render_nat_table",
    "render_root_batch",
]

# The NAT routers' own table; one table per namespace, so deleting it undoes everything.
NAT_TABLE = "hl_lab"


def render_root_batch(plan: LabPlan, names: RunNames) -> str:
    """Namespaces, and veth pairs created directly inside them (nothing stays in the root ns)."""
    lines = [f"netns add {names.ns(role)}" for role in plan.hosts]
    for cable in plan.cables:
        lines.append(
            f"link add name {cable.a_if} netns {names.ns(cable.a)} type veth"
            f" peer name {cable.b_if} netns {names.ns(cable.b)}"
        )
    return "\n".join(lines) + "\n"


def render_host_batch(plan: LabPlan, role: str) -> str:
    """All inside one namespace: loopback, bridges, addresses, interfaces up, default route."""
    host = plan.host(role)
    lines = ["link set lo up"]
    ifaces: list[str] = []
    for cable in plan.cables:
        if cable.a == role:
            ifaces.append(cable.a_if)
        if cable.b == role:
            ifaces.append(cable.b_if)
    for bridge in plan.bridges:
        if bridge.host != role:
            continue
        lines.append(f"link add name {bridge.name} type bridge")
        for port in bridge.ports:
            lines.append(f"link set {port} master {bridge.name}")
        ifaces.append(bridge.name)
    for ifname in ifaces:
        lines.append(f"link set {ifname} up")
    for ifname, addr in host.addresses:
        lines.append(f"addr add {addr.with_prefixlen} dev {ifname}")
    if host.gateway is not None:
        lines.append(f"route add default via {host.gateway}")
    return "\n".join(lines) + "\n"


def _masquerade_rule(wan_if: str, lan_net: str, nat: NatType) -> str:
    # full_cone maps like cone (the port kept); its filtering is _full_cone's.
    random = " random" if nat == "symmetric" else ""
    return f'oifname "{wan_if}" ip saddr {lan_net} masquerade{random}'


def render_nat_table(plan: LabPlan, role: str) -> str:
    """A NAT router's table: masquerade its LAN out of its WAN (``random`` ports when the
    router is symmetric); DNAT rules get added later.

    Its ``input`` chain is empty until :func:`render_masquerade` (``Lab.set_nat``) fills it."""
    host = plan.host(role)
    if host.wan_if is None or host.lan_net is None:
        raise ValueError(f"{role} is not a NAT router")
    return (
        f"table ip {NAT_TABLE} {{\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        "  }\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    {_masquerade_rule(host.wan_if, host.lan_net, host.nat)}\n"
        "  }\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        "  }\n"
        "}\n"
    )


def render_masquerade(plan: LabPlan, role: str, nat: NatType) -> str:
    """Switches a built router's NAT type (its postrouting chain again, with ``nat``) and
    gives it a home router's firewall: new UDP from the WAN to the router itself is dropped.

    The drop matters for hole punching: an unsolicited datagram that reached the router would
    leave a conntrack entry for its (source, router port) pair, and the LAN host's own
    datagram toward that source, sent a moment later, would be given another public port (the
    NAT avoids the clash), so the two ends' probes would never meet. Dropped in ``input``, the
    packet's entry is never confirmed. (Not in the default lab: with it the UDP relay's first
    handshake sometimes took longer than higgsvpn's 12 s; see tests/e2e/test_hole_punch.py.)"""
    host = plan.host(role)
    if host.wan_if is None or host.lan_net is None:
        raise ValueError(f"{role} is not a NAT router")
    return (
        f"flush chain ip {NAT_TABLE} postrouting\n"
        f"add rule ip {NAT_TABLE} postrouting {_masquerade_rule(host.wan_if, host.lan_net, nat)}\n"
        f"flush chain ip {NAT_TABLE} input\n"
        f'add rule ip {NAT_TABLE} input iifname "{host.wan_if}"'
        " meta l4proto udp ct state new drop\n"
    ) + _full_cone(host.wan_if, host.lan_net, str(host.address(host.wan_if).ip), nat)


def _full_cone(wan_if: str, lan_net: str, wan: str, nat: NatType) -> str:
    """Endpoint-independent filtering (``full_cone``), or none (the chains emptied).

    Every UDP datagram a LAN host sends out records its public port -> its LAN address in a
    dynamic map (after masquerade, which kept the port: the ``cone`` mapping); UDP from anyone
    to a recorded port is DNATed back to that host, same port. The lab's LAN sockets are few,
    so a port is one host's (what a full-cone router's mapping table holds). Own chains, so
    that switching back empties them without touching the port forwards in ``prerouting``."""
    t = NAT_TABLE
    out = (
        f"add map ip {t} cone_ports {{ type inet_service : ipv4_addr;"
        " flags dynamic,timeout; timeout 120s; }\n"
        f"add chain ip {t} cone_record"
        " { type filter hook postrouting priority srcnat + 1; policy accept; }\n"
        f"add chain ip {t} cone_in"
        " { type nat hook prerouting priority dstnat + 1; policy accept; }\n"
        f"flush chain ip {t} cone_record\n"
        f"flush chain ip {t} cone_in\n"
        f"flush map ip {t} cone_ports\n"
    )
    if nat != "full_cone":
        return out
    return out + (
        f'add rule ip {t} cone_record oifname "{wan_if}" ct original ip saddr {lan_net}'
        " meta l4proto udp update @cone_ports { udp sport timeout 120s : ct original ip saddr }\n"
        f'add rule ip {t} cone_in iifname "{wan_if}" ip daddr {wan}'
        " udp dport @cone_ports dnat ip to udp dport map @cone_ports\n"
    )


def render_dnat_udp(plan: LabPlan, router: str, port: int, to_addr: str, to_port: int) -> str:
    """A port forward on a NAT router: UDP ``port`` on its WAN address to ``to_addr:to_port``."""
    host = plan.host(router)
    if host.wan_if is None:
        raise ValueError(f"{router} is not a NAT router")
    if not (0 < port < 65536 and 0 < to_port < 65536):
        raise ValueError(f"bad port {port} -> {to_port}")
    wan = host.address(host.wan_if).ip
    return (
        f'add rule ip {NAT_TABLE} prerouting iifname "{host.wan_if}" ip daddr {wan}'
        f" udp dport {port} dnat to {to_addr}:{to_port}\n"
    )


def render_ipv6_batch(v6: V6HostPlan) -> str:
    """One host's IPv6 addresses (no duplicate address detection: the lab's addresses are
    unique by plan, and DAD would delay every address by a second or more) and routes."""
    lines = [f"addr add {addr.with_prefixlen} dev {ifname} nodad" for ifname, addr in v6.addresses]
    for prefix, via in v6.routes:
        lines.append(f"route add {prefix} via {via}")
    if v6.gateway is not None:
        # "::/0", not "default": in a batch the family comes from the addresses given.
        lines.append(f"route add ::/0 via {v6.gateway}")
    return "\n".join(lines) + "\n"
