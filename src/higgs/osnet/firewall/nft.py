"""The nftables backend: one `inet` table of ours, replaced whole by one `nft -f` transaction.

Removal deletes the table, which takes every chain, set and rule of ours with it; nothing of
ours is ever written into another table.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from typing import Any

from higgs.osnet import conntrack
from higgs.osnet.changes import ChangeLog
from higgs.osnet.errors import CommandError, OsnetError
from higgs.osnet.runner import Runner

from . import nft_render
from .base import UNDO, FirewallBackend, FirewallError, FirewallStatus, FirewallUndo
from .flows import cut_blocked_flows
from .plan import FirewallNames, NodePolicy, Plan

__all__ = ["NftBackend", "fingerprint", "other_filters", "parse_status"]

log = logging.getLogger(__name__)

_MASQ = re.compile(r'oifname "(?P<oif>[^"]+)" ip6? saddr (?P<src>\S+) masquerade')
_DNAT = re.compile(r"th dport 53 dnat ip6? to (?P<to>\S+)")


def parse_status(listing: str) -> FirewallStatus:
    """Reads ``nft list table inet <ours>`` output (empty: the table is absent)."""
    if not listing.strip():
        return FirewallStatus("nft", applied=False)
    return FirewallStatus(
        "nft",
        applied=True,
        masquerade=tuple((m["src"], m["oif"]) for m in _MASQ.finditer(listing)),
        dns_redirect=tuple(m["to"] for m in _DNAT.finditer(listing)),
        mss_clamp="maxseg size set rt mtu" in listing,
        kill_switch="hook output" in listing,
    )


def fingerprint(listing: str) -> tuple[str, ...]:
    """Each chain of our table with its number of rules (``nft list table`` output; empty
    when the table is absent). Set elements, which the datapath adds, are left out."""
    chains: list[str] = []
    chain: str | None = None
    rules = 0
    for raw in listing.splitlines():
        line = raw.strip()
        if chain is None:
            if line.startswith("chain ") and line.endswith("{"):
                chain, rules = line[len("chain ") : -1].strip(), 0
        elif line == "}":
            chains.append(f"chain {chain}: {rules} rule(s)")
            chain = None
        elif line and not line.startswith(("type ", "policy ", "comment ")):
            rules += 1
    if not chains and listing.strip():
        chains.append("table")  # present but empty (flushed to nothing)
    return tuple(chains)


# Hooks where another program's filter would see WireGuard's datagrams to or from this host.
_LOCAL_HOOKS = frozenset({"prerouting", "input", "output", "postrouting"})


def other_filters(runner: Runner, own_table: str) -> list[str]:
    """The filter chains of other programs on the hooks of this host's own traffic (nft
    tables, iptables-nft's among them), plus the legacy iptables filter table when it
    exists. A kill switch leaves WireGuard's datagrams untracked only where this is empty:
    an untracked packet is not ``established`` to anyone else's rules either, so a host
    firewall that lets answers in by ``ct state`` (ufw, firewalld) would drop them."""
    found: list[str] = []
    result = runner.run(["nft", "-j", "list", "ruleset"], check=False)
    if not result.ok:
        return ["nft ruleset unreadable"]
    try:
        items = json.loads(result.stdout).get("nftables", [])
    except (ValueError, AttributeError):
        return ["nft ruleset unreadable"]
    for item in items:
        chain = item.get("chain") if isinstance(item, dict) else None
        if not isinstance(chain, dict) or chain.get("table") == own_table:
            continue
        if chain.get("type") == "filter" and chain.get("hook") in _LOCAL_HOOKS:
            found.append(f"{chain.get('family')} {chain.get('table')} {chain.get('name')}")
    # Reading /proc, not running iptables-legacy, which would create the table it lists.
    names = runner.run(["cat", "/proc/net/ip_tables_names"], check=False)
    if names.ok and "filter" in names.stdout.split():
        found.append("legacy iptables filter table")
    return found


class NftBackend(FirewallBackend):
    """A node policy is applied with established flows accepted first, then the flows to
    blocked destinations cut (:mod:`.flows`); where the ``conntrack`` tool is missing or
    fails, with owner protection ahead of the established shortcut instead."""

    name = "nft"

    def __init__(
        self, names: FirewallNames, runner: Runner, journal: ChangeLog | None = None
    ) -> None:
        super().__init__(names, runner, journal)
        self._can_cut: bool | None = None  # probed at the first node apply

    @classmethod
    def is_supported(cls, runner: Runner) -> bool:
        try:
            # Check mode talks to the kernel (so a missing nf_tables shows) but commits nothing.
            probe = "table inet higgs_probe {}\ndelete table inet higgs_probe\n"
            runner.run(["nft", "-c", "-f", "-"], input=probe, timeout=10)
        except CommandError:
            return False
        return True

    def _nft_f(self, script: str) -> None:
        try:
            self.runner.run(["nft", "-f", "-"], input=script)
        except CommandError as exc:
            raise FirewallError(
                f"nftables refused our rules for {self.names.table}: {exc}"
            ) from exc

    def _apply(self, plan: Plan) -> None:
        if not isinstance(plan, NodePolicy):
            self._nft_f(nft_render.render(plan))
            return
        if self._can_cut is None:
            self._can_cut = conntrack.available(self.runner)
            if not self._can_cut:
                log.warning(
                    "no conntrack tool here: established flows go through owner protection "
                    "too (slower; install conntrack-tools)"
                )
        if self._can_cut:
            self._nft_f(nft_render.render(plan))
            try:
                cut_blocked_flows(self.runner, plan)
                return
            except (OsnetError, CommandError) as exc:
                # Protection first: the slower order, which does not need the cut.
                log.warning("could not cut flows to blocked destinations (%s)", exc)
        self._nft_f(nft_render.render(plan, established_first=False))

    def _remove(self) -> list[str]:
        present = bool(self.listing())
        # Created-then-deleted in one transaction: succeeds whether or not the table exists.
        self._nft_f(nft_render.render_delete(self.names.table))
        return [f"nft table inet {self.names.table}"] if present else []

    @classmethod
    def sweep(cls, names: FirewallNames, runner: Runner) -> list[str]:
        if shutil.which("nft") is None:
            return []  # no nft here, so no table of ours either
        return super().sweep(names, runner)

    def undo_spec(self) -> dict[str, Any]:  # the journal record of a FirewallUndo
        n = self.names
        return UNDO.record(FirewallUndo(self.name, n.table, n.chain_prefix, n.comment))

    @classmethod
    def from_undo(cls, params: FirewallUndo, runner: Runner) -> NftBackend:
        return cls(params.names, runner)

    def listing(self, runner: Runner | None = None) -> str:
        """Our table as nft prints it ("" when absent)."""
        argv = ["nft", "list", "table", "inet", self.names.table]
        result = (runner or self.runner).run(argv, check=False)
        return result.stdout if result.ok else ""

    def fingerprint(self, runner: Runner | None = None) -> tuple[str, ...]:
        return fingerprint(self.listing(runner))

    def status(self) -> FirewallStatus:
        return parse_status(self.listing())
