"""Plans rendered for iptables/ip6tables: chains we own, filled by one `iptables-restore`.

For hosts without nftables (or whose firewall is iptables-managed). Everything we add lives in
chains named ``<chain_prefix>-<ROLE>`` (e.g. ``HIGGSNODE_X-FWD``); the only lines in the
host's built-in chains are jumps carrying the owner's comment marker (e.g. ``higgs:node:x``).
The restore script declares our chains (which creates or empties them) and fills them;
``--noflush`` leaves the host's rules alone, and each table's section commits atomically.
Jumps are inserted only when a ``-C`` check says they are missing, so a re-apply never
doubles them.

The same policy as :mod:`.nft_render`, with one difference forced by iptables semantics: an
ACCEPT in our node chains is final for the built-in chain (which is what makes forwarding work
on hosts whose FORWARD policy is DROP), so accepts are narrowed to the tunnel's traffic; the
kill switch only takes traffic away, so it RETURNs instead of accepting.
"""

from __future__ import annotations

import ipaddress
import zlib
from dataclasses import dataclass, field
from typing import Literal

from .plan import IPNetwork, KillSwitchPolicy, NodePolicy, Plan

__all__ = [
    "ChainSet",
    "Family",
    "Jump",
    "render",
    "render_kill_switch",
    "render_node",
]

Family = Literal[4, 6]


@dataclass(frozen=True, slots=True)
class Jump:
    """A jump from a built-in chain into ours, inserted at the top."""

    table: str
    builtin: str
    target: str
    comment: str

    def spec(self) -> list[str]:
        """The rule without its command (for `-C`, `-I <chain> 1`, `-D`)."""
        return ["-m", "comment", "--comment", self.comment, "-j", self.target]

    def restore_line(self) -> str:
        return f'-I {self.builtin} 1 -m comment --comment "{self.comment}" -j {self.target}'


@dataclass(frozen=True, slots=True)
class ChainSet:
    """Everything one family needs: our chains and their rules per table, plus the jumps."""

    family: Family
    # table -> chain -> rules (each rule without the leading `-A <chain>`)
    tables: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    jumps: tuple[Jump, ...] = ()

    def restore_script(self, missing: tuple[Jump, ...] | None = None) -> str:
        """The `iptables-restore --noflush` input; jumps limited to ``missing`` when given."""
        insert = self.jumps if missing is None else missing
        lines: list[str] = []
        for table, chains in self.tables.items():
            lines.append(f"*{table}")
            lines += [f":{chain} - [0:0]" for chain in chains]
            for chain, rules in chains.items():
                lines += [f"-A {chain} {rule}" for rule in rules]
            lines += [j.restore_line() for j in insert if j.table == table]
            lines.append("COMMIT")
        return "\n".join(lines) + "\n"


def _reject(family: Family) -> str:
    return "-j REJECT --reject-with " + (
        "icmp-admin-prohibited" if family == 4 else "icmp6-adm-prohibited"
    )


def _nets(family: Family, nets: tuple[IPNetwork, ...]) -> list[IPNetwork]:
    return [n for n in nets if n.version == family]


class _Node:
    """Builds one family's chains for a :class:`NodePolicy`."""

    def __init__(self, plan: NodePolicy, family: Family) -> None:
        self.plan = plan
        self.family = family
        n = plan.names
        self.fwd, self.blk, self.inp = n.chain("FWD"), n.chain("BLK"), n.chain("IN")
        self.pre, self.nat = n.chain("PRE"), n.chain("NAT")
        self.tun = f"-i {plan.tunnel_if}"

    @property
    def forwards(self) -> bool:
        return self.family == 4 or self.plan.nat66

    def _dns_address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        dns = self.plan.dns
        if dns is None:
            return None
        return dns.address_v4 if self.family == 4 else dns.address_v6

    def build(self) -> ChainSet:
        plan, fam = self.plan, self.family
        filt: dict[str, list[str]] = {self.fwd: self._forward(), self.inp: self._input()}
        jumps = [Jump("filter", "FORWARD", self.fwd, plan.names.comment)]
        jumps.append(Jump("filter", "INPUT", self.inp, plan.names.comment))
        tables: dict[str, dict[str, list[str]]] = {"filter": filt}
        if self.forwards:
            filt[self.blk] = self._blocked()
            subnet = plan.tunnel_subnet_v4 if fam == 4 else plan.tunnel_subnet_v6
            nat: dict[str, list[str]] = {
                self.pre: self._prerouting(),
                self.nat: [f"-s {subnet} -o {plan.uplink_if} -j MASQUERADE"],
            }
            tables["nat"] = nat
            jumps += [
                Jump("nat", "PREROUTING", self.pre, plan.names.comment),
                Jump("nat", "POSTROUTING", self.nat, plan.names.comment),
            ]
        return ChainSet(fam, tables, tuple(jumps))

    def _blocked(self) -> list[str]:
        plan, fam = self.plan, self.family
        allow = plan.allow_v4 if fam == 4 else plan.allow_v6
        blocked = plan.blocked_v4 if fam == 4 else plan.blocked_v6
        rules = [f"-d {n} -j RETURN" for n in allow]
        return rules + [f"-d {n} {_reject(fam)}" for n in blocked]

    def _forward(self) -> list[str]:
        plan, fam, tun = self.plan, self.family, self.tun
        out = f"-o {plan.tunnel_if}"
        if not self.forwards:
            # No IPv6 in the tunnel: fail fast rather than leak or hang.
            return [f"{tun} {_reject(fam)}", f"{out} -j DROP"]
        rules: list[str] = []
        if plan.mss_clamp:
            clamp = "-p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"
            rules += [f"{tun} {clamp}", f"{out} {clamp}"]
        rules.append(f"{tun} -j {self.blk}")
        if fam == 6 and self._dns_address() is None:
            rules += [f"{tun} -p {p} -m {p} --dport 53 {_reject(fam)}" for p in ("udp", "tcp")]
        est = "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        rules += [f"{tun} {est}", f"{out} {est}"]
        for pr in plan.blocked_ports:
            how = "-j REJECT --reject-with tcp-reset" if pr.protocol == "tcp" else _reject(fam)
            rules.append(f"{tun} -p {pr.protocol} -m {pr.protocol} --dport {pr.port} {how}")
        new = "-m conntrack --ctstate NEW"
        if plan.per_client_new_conn_rate is not None:
            # hashlimit names are shared by the whole network namespace and cut at 15 bytes: a
            # hash of our table name fits and does not collide with another instance's.
            meter = f"hg{fam}_{zlib.crc32(plan.names.table.encode()):08x}"
            rules.append(
                f"{tun} {new} -m hashlimit --hashlimit-above "
                f"{plan.per_client_new_conn_rate}/sec --hashlimit-burst "
                f"{plan.per_client_new_conn_burst} --hashlimit-mode srcip "
                f"--hashlimit-name {meter} -j DROP"
            )
        # After the rate (see nft_render): connlimit records the connections it lets past.
        if plan.per_client_conn_limit is not None:
            mask = 32 if fam == 4 else 128
            rules.append(
                f"{tun} {new} -m connlimit --connlimit-above {plan.per_client_conn_limit} "
                f"--connlimit-mask {mask} --connlimit-saddr {_reject(fam)}"
            )
        subnet = plan.tunnel_subnet_v4 if fam == 4 else plan.tunnel_subnet_v6
        rules += [
            f"{tun} -s {subnet} -o {plan.uplink_if} -j ACCEPT",
            f"{tun} -j DROP",
            f"{out} -j DROP",
        ]
        return rules

    def _input(self) -> list[str]:
        plan, fam, tun = self.plan, self.family, self.tun
        rules = [f"{tun} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
        dns = self._dns_address()
        if dns is not None and plan.dns is not None:
            rules += [
                f"{tun} -d {dns} -p {p} -m {p} --dport {plan.dns.port} -j ACCEPT"
                for p in ("udp", "tcp")
            ]
        if plan.allow_ping_node:
            if fam == 4:
                rules.append(f"{tun} -d {plan.tunnel_v4.ip} -p icmp --icmp-type 8 -j ACCEPT")
            elif plan.nat66 and plan.tunnel_v6 is not None:
                rules.append(
                    f"{tun} -d {plan.tunnel_v6.ip} -p ipv6-icmp --icmpv6-type 128 -j ACCEPT"
                )
        if fam == 6:
            # Neighbour discovery on Ethernet-like tunnels (see nft_render).
            rules += [f"{tun} -p ipv6-icmp --icmpv6-type {t} -j ACCEPT" for t in (135, 136)]
        rules.append(f"{tun} {_reject(fam)}")
        return rules

    def _prerouting(self) -> list[str]:
        dns, plan = self._dns_address(), self.plan
        if dns is None or plan.dns is None:
            return []
        to = f"{dns}:{plan.dns.port}" if self.family == 4 else f"[{dns}]:{plan.dns.port}"
        return [
            f"{self.tun} -p {p} -m {p} --dport 53 -j DNAT --to-destination {to}"
            for p in ("udp", "tcp")
        ]


def render_node(plan: NodePolicy) -> tuple[ChainSet, ChainSet]:
    """(IPv4, IPv6) chain sets for the exit node."""
    return _Node(plan, 4).build(), _Node(plan, 6).build()


def _kill_switch_forward(plan: KillSwitchPolicy, fam: Family) -> list[str]:
    """Forwarded traffic leaves through the tunnel only; dropped, not rejected (see
    nft_render's twin)."""
    fwd = [
        f"-o {plan.tunnel_if} -j RETURN",
        f"-i {plan.tunnel_if} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
    ]
    if plan.allow_lan:
        fwd += [f"-d {n} -j RETURN" for n in (plan.lan_v4 if fam == 4 else plan.lan_v6)]
    if fam == 6 and not plan.block_ipv6_unless_tunnelled:
        fwd.append("-j RETURN")
    fwd.append("-j DROP")
    return fwd


def _kill_switch(plan: KillSwitchPolicy, fam: Family) -> ChainSet:
    out_c, in_c = plan.names.chain("OUT"), plan.names.chain("IN")
    fwd_c = plan.names.chain("FWD")
    out: list[str] = []
    inp: list[str] = []
    if plan.allow_loopback:
        out.append("-o lo -j RETURN")
        inp.append("-i lo -j RETURN")
    out.append(f"-o {plan.tunnel_if} -j RETURN")
    inp.append(f"-i {plan.tunnel_if} -j RETURN")
    if plan.fwmark is not None:
        out.append(f"-m mark --mark {plan.fwmark:#x} -j RETURN")
    for ep in plan.endpoints:
        if ep.address.version == fam:
            pr = ep.protocol
            out.append(f"-d {ep.address} -p {pr} -m {pr} --dport {ep.port} -j RETURN")
    inp.append("-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN")
    if plan.allow_dhcp:
        c, s = (68, 67) if fam == 4 else (546, 547)
        out.append(f"-p udp -m udp --sport {c} --dport {s} -j RETURN")
        inp.append(f"-p udp -m udp --sport {s} --dport {c} -j RETURN")
    if plan.allow_lan:
        lan = plan.lan_v4 if fam == 4 else plan.lan_v6
        out += [f"-d {n} -j RETURN" for n in lan]
        inp += [f"-s {n} -j RETURN" for n in lan]
    if fam == 6 and plan.needs_neighbour_discovery:
        for t in (133, 134, 135, 136):
            out.append(f"-p ipv6-icmp --icmpv6-type {t} -j RETURN")
            inp.append(f"-p ipv6-icmp --icmpv6-type {t} -j RETURN")
    if fam == 6 and not plan.block_ipv6_unless_tunnelled:
        out.append("-j RETURN")
        inp.append("-j RETURN")
    out.append(_reject(fam))
    inp.append("-j DROP")
    jumps = (
        Jump("filter", "OUTPUT", out_c, plan.names.comment),
        Jump("filter", "INPUT", in_c, plan.names.comment),
        Jump("filter", "FORWARD", fwd_c, plan.names.comment),
    )
    chains = {out_c: out, in_c: inp, fwd_c: _kill_switch_forward(plan, fam)}
    return ChainSet(fam, {"filter": chains}, jumps)


def render_kill_switch(plan: KillSwitchPolicy) -> tuple[ChainSet, ChainSet]:
    return _kill_switch(plan, 4), _kill_switch(plan, 6)


def render(plan: Plan) -> tuple[ChainSet, ChainSet]:
    if isinstance(plan, NodePolicy):
        return render_node(plan)
    return render_kill_switch(plan)
