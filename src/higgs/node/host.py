"""Every host change the node makes, in one place, through the osnet layer.

The agent calls these steps in order; each one journals its undo (inside osnet) before it
changes anything, so :meth:`NodeHost.teardown` — or, after a crash, :meth:`NodeHost.recover`
at the next start or in ``higgsnode cleanup`` — puts the host back as it was.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from higgs.common.keys import PrivateKey
from higgs.node.policy import build_policy
from higgs.node.settings import NodeSettings
from higgs.node.shaping import Shaper, plan_for
from higgs.osnet import discovery, sweep, sysctl
from higgs.osnet.firewall import FirewallBackend, select_backend
from higgs.osnet.firewall.plan import NodePolicy
from higgs.osnet.journal import Journal
from higgs.osnet.names import OwnedNames
from higgs.osnet.runner import Runner, SubprocessRunner
from higgs.osnet.wireguard import Peer as WgPeer
from higgs.osnet.wireguard import PeerStats, WireGuard

__all__ = ["NodeHost", "Uplink", "WgPeerTable", "instance_for"]

log = logging.getLogger(__name__)

JOURNAL_FILE = "journal.json"
FORWARDING = "net.ipv4.ip_forward"
DEFAULT_INTERFACE = "higgs0"

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def instance_for(interface: str) -> str:
    """The owned-names instance for an interface: none for the default one, else derived from
    the name, so two nodes on one host (or parallel tests) never share a table or chain."""
    if interface == DEFAULT_INTERFACE:
        return ""
    stem = re.sub(r"[^a-z0-9_]", "_", interface.lower()).lstrip("_")
    return (stem or "x")[:12]


@dataclass(frozen=True)
class Uplink:
    name: str
    addresses: tuple[IPInterface, ...]
    mtu: int
    gateway: str | None


class WgPeerTable:
    """:class:`higgs.node.peers.PeerTable` over osnet's WireGuard interface."""

    def __init__(self, wg: WireGuard) -> None:
        self._wg = wg

    def peers(self) -> tuple[PeerStats, ...]:
        return self._wg.peers()

    def set_peer(self, public_key: str, allowed_ips: Sequence[str]) -> None:
        self._wg.set_peer(WgPeer(public_key=public_key, allowed_ips=tuple(allowed_ips)))

    def remove_peer(self, public_key: str) -> None:
        self._wg.remove_peer(public_key)


class NodeHost:
    def __init__(self, settings: NodeSettings, *, runner: Runner | None = None) -> None:
        self.settings = settings
        self.runner: Runner = runner if runner is not None else SubprocessRunner()
        self.names = OwnedNames.for_instance(
            "node", instance_for(settings.interface), settings.interface
        )
        self.journal: Journal | None = None
        self.wg: WireGuard | None = None
        self.firewall: FirewallBackend | None = None
        self.policy: NodePolicy | None = None

    @property
    def journal_path(self) -> Path:
        return self.settings.state_dir / JOURNAL_FILE

    def open_journal(self) -> Journal:
        """Takes the journal (and its lock: one process per state dir)."""
        if self.journal is None:
            self.journal = Journal(self.journal_path, runner=self.runner)
        return self.journal

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    # ---- discovery (read only) ---------------------------------------------------------

    def uplink(self) -> Uplink:
        """The interface of the default route; DiscoveryError when there is none."""
        found = discovery.default_uplink()
        return Uplink(
            name=found.name,
            addresses=tuple(found.addresses),
            mtu=found.mtu,
            gateway=str(found.gateway) if found.gateway else None,
        )

    def host_addresses(self) -> list[IPInterface]:
        return list(discovery.local_addresses())

    # ---- recovery ----------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Undoes what a crashed predecessor journaled, then sweeps anything named ours.
        Returns the problems met (empty when the host is clean)."""
        problems: list[str] = []
        journal = self.open_journal()
        if len(journal):
            log.warning("undoing %d change(s) left by an earlier run", len(journal))
            try:
                journal.replay()
            except Exception as exc:
                problems.append(str(exc))
        problems += sweep.sweep(self.names, runner=self.runner)
        return problems

    # ---- setup steps -------------------------------------------------------------------

    def bring_up_interface(self, key: PrivateKey) -> WireGuard:
        journal = self.open_journal()
        wg = WireGuard(self.settings.interface, journal=journal, runner=self.runner)
        wg.create()
        self.wg = wg
        wg.configure(key, listen_port=self.settings.listen_port)
        wg.set_addresses([str(self.settings.node_address)])
        wg.up(mtu=self.settings.mtu)
        return wg

    def setup_shaping(self) -> Shaper:
        """tc trees for the owner's rates (nothing when no rate is set)."""
        shaper = Shaper(plan_for(self.settings), self.open_journal(), self.runner)
        shaper.setup()
        return shaper

    def enable_forwarding(self) -> str:
        """Turns IPv4 forwarding on; returns the value found (restored on stop)."""
        return sysctl.set(self.open_journal(), FORWARDING, "1", runner=self.runner)

    def apply_firewall(self, uplink: Uplink) -> NodePolicy:
        journal = self.open_journal()
        self.policy = build_policy(
            self.settings,
            instance=self.names.instance,
            uplink=uplink.name,
            host_addresses=self.host_addresses(),
        )
        self.firewall = select_backend(self.settings.firewall, journal=journal, runner=self.runner)
        self.firewall.apply(self.policy)
        return self.policy

    def move_uplink(self, uplink: Uplink) -> None:
        """The default route moved: NAT follows it (established tunnels stay up)."""
        if self.firewall is None or self.policy is None:
            return
        policy = build_policy(
            self.settings,
            instance=self.names.instance,
            uplink=uplink.name,
            host_addresses=self.host_addresses(),
        )
        self.firewall.update_uplink(policy)
        self.policy = policy

    # ---- teardown ----------------------------------------------------------------------

    def teardown(self) -> None:
        """Undoes every change, newest first; raises UndoError listing all failed steps."""
        if self.journal is None:
            return
        self.journal.undo_all()
        self.wg = None
        self.firewall = None
