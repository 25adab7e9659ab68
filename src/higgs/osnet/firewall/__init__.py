"""Firewall backends applying one policy: the node's NAT and owner protection, the kill switch.

Pure plans (:mod:`.plan`) are rendered (:mod:`.nft_render`, :mod:`.iptables_render`) and applied
by a backend (:mod:`.nft`, :mod:`.iptables`) chosen by :func:`get_backend`, like sshuttle's
``get_method``. The journal's ``firewall_remove`` undo (:data:`UNDO`, listed in
:mod:`higgs.osnet.undo_registry`) and a ``firewall`` step of :func:`higgs.osnet.sweep.sweep`
(registered when this package is imported; ``cleanup`` imports it) let a ``cleanup`` after a
crash remove our rules from the journal alone, or from the owner's names alone.
"""

from __future__ import annotations

import contextlib
from typing import Literal

from higgs.osnet import sweep as sweep_mod
from higgs.osnet.changes import ChangeLog
from higgs.osnet.errors import CommandError
from higgs.osnet.names import OwnedNames
from higgs.osnet.runner import Runner, SubprocessRunner

from .base import UNDO, FirewallBackend, FirewallError, FirewallStatus, FirewallUndo
from .iptables import IptablesBackend, detect_flavour
from .nft import NftBackend, other_filters
from .plan import (
    DnsRedirect,
    Endpoint,
    FirewallNames,
    FirewallPlanError,
    KillSwitchPolicy,
    NodePolicy,
    Plan,
    PortRule,
    protected_from,
)

__all__ = [
    "BACKENDS",
    "KILL_SWITCH_PART",
    "UNDO",
    "BackendName",
    "DnsRedirect",
    "Endpoint",
    "FirewallBackend",
    "FirewallError",
    "FirewallNames",
    "FirewallPlanError",
    "FirewallStatus",
    "FirewallUndo",
    "IptablesBackend",
    "KillSwitchPolicy",
    "NftBackend",
    "NodePolicy",
    "Plan",
    "PortRule",
    "get_backend",
    "other_filters",
    "protected_from",
    "sweep",
]

BackendName = Literal["auto", "nft", "iptables"]
# The part a client's kill switch adds to its owner's names: FirewallNames.of(owned, "ks").
KILL_SWITCH_PART = "ks"
BACKENDS: dict[str, type[FirewallBackend]] = {"nft": NftBackend, "iptables": IptablesBackend}


def _forward_policy_drops(runner: Runner) -> bool:
    """True when the host's iptables FORWARD chain drops by default (Docker, ufw, firewalld
    in iptables mode). An accept in our own nft table cannot override a drop in another
    table, so such hosts need our rules inside that very chain: the iptables backend."""
    result = runner.run(["iptables", "-w", "10", "-S", "FORWARD"], check=False)
    return result.ok and "-P FORWARD DROP" in result.stdout


def get_backend(
    name: BackendName | str,
    names: FirewallNames,
    runner: Runner,
    journal: ChangeLog | None = None,
) -> FirewallBackend:
    """The backend ``name``, or with ``auto`` the best one this host supports."""
    if name == "auto":
        nft_ok = NftBackend.is_supported(runner)
        ipt_ok = IptablesBackend.is_supported(runner)
        if ipt_ok and (not nft_ok or _forward_policy_drops(runner)):
            return IptablesBackend(names, runner, journal, flavour=detect_flavour(runner))
        if nft_ok:
            return NftBackend(names, runner, journal)
        raise FirewallError(
            "neither nftables nor iptables works here: install `nftables` (or `iptables`) "
            "and run as root or with CAP_NET_ADMIN"
        )
    cls = BACKENDS.get(name)
    if cls is None:
        raise FirewallError(f"unknown firewall backend {name!r}: use auto, nft or iptables")
    if not cls.is_supported(runner):
        raise FirewallError(f"the {name} firewall backend does not work on this host")
    return cls(names, runner, journal)


def sweep(names: FirewallNames, runner: Runner) -> list[str]:
    """Removes anything under ``names`` with every backend that works here, without state.
    Returns the failures (every backend is tried)."""
    failures: list[str] = []
    for cls in BACKENDS.values():
        try:
            cls.sweep(names, runner)
        except (FirewallError, CommandError) as exc:
            failures.append(str(exc))
    return failures


def _sweep_hook(owned: OwnedNames, runner: Runner, netns: str | None) -> list[str]:
    """The firewall's step in :func:`higgs.osnet.sweep.sweep`: the owner's rules and, when
    its names allow one, its kill switch (``FirewallNames.of(owned, "ks")``)."""
    if netns is not None and getattr(runner, "netns", None) != netns:
        runner = SubprocessRunner(netns=netns)
    candidates = [FirewallNames.of(owned)]
    # Names too long for a second rule set mean none can exist.
    with contextlib.suppress(FirewallPlanError):
        candidates.append(FirewallNames.of(owned, KILL_SWITCH_PART))
    removed: list[str] = []
    errors: list[str] = []
    for names in candidates:
        for cls in BACKENDS.values():
            try:
                removed += cls.sweep(names, runner)
            except (FirewallError, CommandError) as exc:
                errors.append(str(exc))
    if errors:
        raise FirewallError("; ".join(errors))
    return removed


sweep_mod.register_hook("firewall", _sweep_hook)
