"""The nftables backend: one `inet` table of ours, replaced whole by one `nft -f` transaction.

Removal deletes the table, which takes every chain, set and rule of ours with it; nothing of
ours is ever written into another table.
"""

from __future__ import annotations

import re
import shutil
from typing import Any

from higgs.osnet.errors import CommandError
from higgs.osnet.runner import Runner

from . import nft_render
from .base import UNDO, FirewallBackend, FirewallError, FirewallStatus, FirewallUndo
from .plan import FirewallNames, Plan

__all__ = ["NftBackend", "fingerprint", "parse_status"]

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


class NftBackend(FirewallBackend):
    name = "nft"

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
        self._nft_f(nft_render.render(plan))

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
