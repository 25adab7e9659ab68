"""Traffic shaping with tc: an owner-set total rate each way, shared fairly between clients.

Only HTB is used (it exists everywhere; CAKE, fq_codel and SFQ may not — see DESIGN.md §8).

Download (towards clients) is shaped on the egress of the tunnel interface; upload (from
clients) on the egress of an IFB device that the tunnel interface's ingress is redirected to.
Both get the same tree::

    1:    htb root, unclassified traffic -> 1:2
    1:1   the owner's total rate (rate = ceil = total)
    1:2   default class (the node's own replies to clients, unknown sources)
    1:N   one class per client: rate = total / max_clients, ceil = per-client cap (or total)

Equal guaranteed rates make HTB share the spare bandwidth equally, so clients get a fair share
of the total; the ceil caps each one. Clients are classified by address with u32 filters that
carry an explicit handle (``800::N``), so a client's filter can be removed on its own. With an
IPv6 tunnel prefix a client's IPv6 address (the same host number, see
``higgs.protocol.api.client_address_v6``) lands in the same class through a second filter at
priority 2 (``801::N``: the hash table u32 gives the second priority created on the qdisc; the
IPv4 filter is always created first).

The qdiscs on the tunnel interface disappear with the interface; the IFB link is journaled
(deleting it takes its qdiscs), so stop and crash recovery remove everything.

This module renders commands (pure, unit-tested as argv lists) and applies them through the
command funnel.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from higgs.osnet import undo
from higgs.osnet.errors import OsnetError
from higgs.osnet.journal import Journal
from higgs.osnet.runner import Runner

__all__ = [
    "ShapingError",
    "ShapingPlan",
    "apply_clients",
    "client_slot",
    "render_base",
    "render_client_add",
    "render_client_remove",
    "setup",
]

UNLIMITED_KBIT = 10_000_000  # 10 Gbit/s stands for "no total set" when only per-client caps are
MIN_RATE_KBIT = 8
MAX_SLOT = 0xFFF  # u32 filter node ids are 12 bits
_FIRST_SLOT = 0x10  # below: the fixed classes


class ShapingError(OsnetError):
    """A shaping plan cannot be applied."""


@dataclass(frozen=True)
class ShapingPlan:
    tunnel_if: str
    ifb_if: str
    tunnel_net: ipaddress.IPv4Network
    # The clients' IPv6 prefix when the node forwards IPv6 (NAT66), else None.
    tunnel_net_v6: ipaddress.IPv6Network | None = None
    down_kbit: int = 0  # total towards clients; 0 = no total
    up_kbit: int = 0  # total from clients; 0 = no total
    per_client_kbit: int = 0  # 0 = no per-client cap
    max_clients: int = 32

    @property
    def shapes_down(self) -> bool:
        return self.down_kbit > 0 or self.per_client_kbit > 0

    @property
    def shapes_up(self) -> bool:
        return self.up_kbit > 0 or self.per_client_kbit > 0

    def devices(self) -> list[tuple[str, str, int]]:
        """(device, the address field that identifies a client there, total kbit)."""
        out = []
        if self.shapes_down:
            out.append((self.tunnel_if, "dst", self.down_kbit or UNLIMITED_KBIT))
        if self.shapes_up:
            out.append((self.ifb_if, "src", self.up_kbit or UNLIMITED_KBIT))
        return out


def client_slot(plan: ShapingPlan, address: str) -> int | None:
    """The class minor / filter id of a client address; None when it has none (outside the
    subnet, or beyond the 12-bit filter ids in a very large subnet: it shares the default)."""
    ip = ipaddress.IPv4Address(address.split("/")[0])
    if ip not in plan.tunnel_net:
        return None
    slot = int(ip) - int(plan.tunnel_net.network_address) + _FIRST_SLOT
    return slot if slot <= MAX_SLOT else None


def _client_v6(plan: ShapingPlan, slot: int) -> ipaddress.IPv6Address | None:
    if plan.tunnel_net_v6 is None:
        return None
    host = slot - _FIRST_SLOT
    if host >= plan.tunnel_net_v6.num_addresses:
        return None
    return plan.tunnel_net_v6.network_address + host


def _kbit(value: int) -> str:
    return f"{max(MIN_RATE_KBIT, value)}kbit"


def render_base(plan: ShapingPlan) -> list[list[str]]:
    """The commands that build both trees (the IFB link itself is created by :func:`setup`)."""
    cmds: list[list[str]] = []
    if plan.shapes_up:
        cmds += [
            ["ip", "link", "set", "dev", plan.ifb_if, "up"],
            ["tc", "qdisc", "replace", "dev", plan.tunnel_if, "handle", "ffff:", "ingress"],
            # protocol all: WireGuard carries IPv4 and IPv6 alike.
            ["tc", "filter", "replace", "dev", plan.tunnel_if, "parent", "ffff:", "protocol",
             "all", "prio", "1", "u32", "match", "u32", "0", "0",
             "action", "mirred", "egress", "redirect", "dev", plan.ifb_if],
        ]  # fmt: skip
    for dev, _, total in plan.devices():
        cmds += [
            ["tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "2"],
            ["tc", "class", "replace", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
             "rate", _kbit(total), "ceil", _kbit(total)],
            ["tc", "class", "replace", "dev", dev, "parent", "1:1", "classid", "1:2", "htb",
             "rate", _kbit(total // (plan.max_clients + 1)), "ceil", _kbit(total)],
        ]  # fmt: skip
    return cmds


def render_client_add(plan: ShapingPlan, address: str) -> list[list[str]]:
    slot = client_slot(plan, address)
    if slot is None:
        return []
    cmds: list[list[str]] = []
    ip = address.split("/")[0]
    for dev, field, total in plan.devices():
        ceil = min(total, plan.per_client_kbit) if plan.per_client_kbit else total
        fair = min(ceil, total // (plan.max_clients + 1))
        cmds += [
            ["tc", "class", "replace", "dev", dev, "parent", "1:1", "classid", f"1:{slot:x}",
             "htb", "rate", _kbit(fair), "ceil", _kbit(ceil)],
            ["tc", "filter", "replace", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1",
             "handle", f"800::{slot:x}", "u32", "match", "ip", field, f"{ip}/32",
             "flowid", f"1:{slot:x}"],
        ]  # fmt: skip
        v6 = _client_v6(plan, slot)
        if v6 is not None:
            cmds.append(
                ["tc", "filter", "replace", "dev", dev, "parent", "1:", "protocol", "ipv6",
                 "prio", "2", "handle", f"801::{slot:x}", "u32", "match", "ip6", field,
                 f"{v6}/128", "flowid", f"1:{slot:x}"]
            )  # fmt: skip
    return cmds


def render_client_remove(plan: ShapingPlan, address: str) -> list[list[str]]:
    slot = client_slot(plan, address)
    if slot is None:
        return []
    cmds: list[list[str]] = []
    for dev, _, _ in plan.devices():
        cmds.append(
            ["tc", "filter", "del", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1",
             "handle", f"800::{slot:x}", "u32"]
        )  # fmt: skip
        if _client_v6(plan, slot) is not None:
            cmds.append(
                ["tc", "filter", "del", "dev", dev, "parent", "1:", "protocol", "ipv6", "prio",
                 "2", "handle", f"801::{slot:x}", "u32"]
            )  # fmt: skip
        cmds.append(["tc", "class", "del", "dev", dev, "classid", f"1:{slot:x}"])
    return cmds


def setup(plan: ShapingPlan, journal: Journal, runner: Runner | None = None) -> None:
    """Builds the trees. The IFB link is journaled before it is created."""
    runner = runner if runner is not None else journal.runner
    if not plan.shapes_down and not plan.shapes_up:
        return
    if plan.shapes_up:
        journal.step(
            f"ifb link {plan.ifb_if} (upload shaping)",
            undo.interface_delete(plan.ifb_if),
            lambda: runner.run(["ip", "link", "add", plan.ifb_if, "type", "ifb"]),
        )
    for argv in render_base(plan):
        runner.run(argv)


def apply_clients(
    plan: ShapingPlan, runner: Runner, before: set[str], after: set[str]
) -> list[str]:
    """Adds classes for new client addresses and removes those of departed ones. Returns the
    problems met (a missing class on removal is fine)."""
    problems: list[str] = []
    for address in sorted(before - after):
        for argv in render_client_remove(plan, address):
            runner.run(argv, check=False)
    for address in sorted(after - before):
        for argv in render_client_add(plan, address):
            result = runner.run(argv, check=False)
            if not result.ok:
                problems.append(f"{' '.join(argv)}: {result.stderr.strip()}")
    return problems
