"""Every host change the node makes, in one place, through the osnet layer.

The agent calls these steps in order; each one journals its undo (inside osnet) before it
changes anything, so :meth:`NodeHost.teardown` — or, after a crash, :meth:`NodeHost.recover`
at the next start or in ``higgsnode cleanup`` — puts the host back as it was. The host itself
is reached only through :class:`~higgs.node.hostops.HostOps` (osnet for real, a fake in the
unit tests of the agent's setup and teardown).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from higgs.common.keys import PrivateKey
from higgs.node.hostops import Firewall, HostOps, IPInterface, OsnetHostOps, Shaper, Tunnel
from higgs.node.policy import build_policy, own_addresses
from higgs.node.settings import NodeSettings
from higgs.node.shaping import ifb_name, plan_for
from higgs.osnet.discovery import OnChange, Uplink, UplinkWatcher
from higgs.osnet.firewall import FirewallNames, FirewallStatus
from higgs.osnet.journal import Journal
from higgs.osnet.names import DEFAULT_INTERFACE as OWNED_DEFAULT_INTERFACE
from higgs.osnet.names import OwnedNames
from higgs.osnet.runner import Runner
from higgs.osnet.wireguard import Peer as WgPeer
from higgs.osnet.wireguard import PeerStats

__all__ = ["NodeHost", "Uplink", "WgPeerTable", "instance_for"]

log = logging.getLogger(__name__)

JOURNAL_FILE = "journal.json"
FORWARDING = "net.ipv4.ip_forward"
FORWARDING_V6 = "net.ipv6.conf.all.forwarding"
DEFAULT_INTERFACE = OWNED_DEFAULT_INTERFACE["node"]


def instance_for(interface: str) -> str:
    """The owned-names instance for an interface: none for the default one, else derived from
    the name, so two nodes on one host (or parallel tests) never share a table or chain."""
    if interface == DEFAULT_INTERFACE:
        return ""
    stem = re.sub(r"[^a-z0-9_]", "_", interface.lower()).lstrip("_")
    return (stem or "x")[:12]


RELAY_KEEPALIVE_S = 25


class WgPeerTable:
    """:class:`higgs.node.peers.PeerTable` over osnet's WireGuard interface."""

    def __init__(self, wg: Tunnel) -> None:
        self._wg = wg

    def peers(self) -> tuple[PeerStats, ...]:
        return self._wg.peers()

    def set_peer(
        self, public_key: str, allowed_ips: Sequence[str], endpoint: str | None = None
    ) -> None:
        if endpoint is None:
            self._wg.set_peer(WgPeer(public_key=public_key, allowed_ips=tuple(allowed_ips)))
            return
        # Through the UDP relay: keep the home router's mapping toward it open (§5). Also a
        # direct peer restored after a crash at its last endpoint (higgs.node.peers): the
        # keepalive makes WireGuard initiate to it at once.
        self._wg.set_peer(
            WgPeer(public_key, tuple(allowed_ips), endpoint, persistent_keepalive=RELAY_KEEPALIVE_S)
        )

    def set_endpoint(
        self, public_key: str, allowed_ips: Sequence[str], endpoint: str, keepalive: int
    ) -> None:
        """Moves the peer to ``endpoint`` in place (its session keys stay: no new handshake,
        no gap), with ``keepalive`` (hole punching, higgs.node.punch)."""
        self._wg.set_peer(WgPeer(public_key, tuple(allowed_ips), endpoint, keepalive))

    def remove_peer(self, public_key: str) -> None:
        self._wg.remove_peer(public_key)


class NodeHost:
    def __init__(
        self, settings: NodeSettings, *, runner: Runner | None = None, ops: HostOps | None = None
    ) -> None:
        self.settings = settings
        self.ops: HostOps = ops if ops is not None else OsnetHostOps(runner)
        self.runner: Runner = self.ops.runner
        self.names = OwnedNames.for_instance(
            "node", instance_for(settings.interface), settings.interface
        )
        self.fw_names = FirewallNames.of(self.names)
        self.journal: Journal | None = None
        self.wg: Tunnel | None = None
        self.firewall: Firewall | None = None
        # The node's own IPv6 tunnel address (with the clients' prefix) when it forwards IPv6.
        self.tunnel_v6: ipaddress.IPv6Interface | None = None
        # False while the uplink has lost its internet IPv6: the firewall rejects IPv6 then.
        self.ipv6_active = False
        # Public key -> endpoint of the peers a crashed run's interface still had when the
        # recovery removed it: the restarted node initiates to them (higgs.node.peers).
        self.previous_endpoints: dict[str, str] = {}

    @property
    def journal_path(self) -> Path:
        return self.settings.state_dir / JOURNAL_FILE

    def open_journal(self) -> Journal:
        """Takes the journal (and its lock: one process per state dir)."""
        if self.journal is None:
            self.journal = self.ops.open_journal(self.journal_path)
        return self.journal

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    # ---- discovery (read only) ---------------------------------------------------------

    def uplink(self) -> Uplink:
        """The interface of the default route; DiscoveryError (nothing changed) when none."""
        return self.ops.default_uplink([self.settings.interface])

    def decide_ipv6(self, uplink: Uplink, public_key: str) -> ipaddress.IPv6Interface | None:
        """Sets (and returns) :attr:`tunnel_v6`: the node forwards IPv6 when allowed and the
        IPv4 uplink also holds the IPv6 default route and an internet IPv6 address (NAT66
        leaves through the one uplink the firewall plan knows)."""
        self.tunnel_v6 = None
        self.ipv6_active = False
        if self.settings.ipv6 == "off":
            log.info("IPv6 forwarding off by configuration: IPv6 from clients is rejected")
            return None
        up6 = self.ipv6_uplink()
        if up6 is None or up6.name != uplink.name:
            log.info(
                "no internet IPv6 on the uplink: IPv6 from clients is rejected",
                extra={"uplink": uplink.name, "ipv6_uplink": up6.name if up6 else None},
            )
            return None
        net = self.settings.subnet_v6(public_key)
        self.tunnel_v6 = ipaddress.IPv6Interface(f"{net.network_address + 1}/{net.prefixlen}")
        self.ipv6_active = True
        log.info("IPv6 with NAT66", extra={"prefix": str(net), "uplink": uplink.name})
        return self.tunnel_v6

    def ipv6_available(self, uplink: Uplink) -> bool:
        """Whether ``uplink`` still has internet IPv6 (IPv6 default route and address)."""
        up6 = self.ipv6_uplink()
        return up6 is not None and up6.name == uplink.name

    def ipv6_uplink(self) -> Uplink | None:
        """The interface of the IPv6 default route (with an internet address), if any."""
        return self.ops.ipv6_uplink([self.settings.interface])

    def host_addresses(self) -> list[IPInterface]:
        return self.ops.addresses([self.settings.interface])

    def firewall_status(self) -> FirewallStatus | None:
        """What our firewall rules look like in the kernel (for diagnose), by either backend."""
        return self.ops.firewall_status(self.fw_names)

    def uplink_watcher(self, on_change: OnChange, interval: float) -> UplinkWatcher:
        """Polls the default route (ours excluded) and reports when it moves."""
        return self.ops.uplink_watcher(
            on_change, exclude=[self.settings.interface], interval=interval
        )

    # ---- recovery ----------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Undoes what a crashed predecessor journaled, then sweeps anything named ours
        (osnet's cleanup, plus the firewall and the shaping IFB, which carry our names too).
        Returns the problems met (empty when the host is clean). Raises JournalError when a
        live agent owns the journal: sweeping under it would pull its interface away."""
        self.close()
        self.previous_endpoints = self.ops.peer_endpoints(self.settings.interface)
        undone, problems = self.ops.recover(
            self.journal_path, self.names, self.fw_names, ifb_name(self.settings.interface)
        )
        if undone:
            log.warning("undid %d change(s) left by an earlier run", undone)
        return problems

    # ---- setup steps -------------------------------------------------------------------

    def bring_up_interface(self, key: PrivateKey, mtu: int) -> Tunnel:
        journal = self.open_journal()
        wg = self.ops.tunnel(self.settings.interface, journal)
        wg.create()
        self.wg = wg
        wg.configure(key, listen_port=self.settings.listen_port)
        addresses = [str(self.settings.node_address)]
        if self.tunnel_v6 is not None:
            addresses.append(str(self.tunnel_v6))
        wg.set_addresses(addresses)
        wg.up(mtu=mtu)
        return wg

    def set_mtu(self, mtu: int) -> None:
        """A new tunnel MTU (the uplink's changed); the interface goes with it on stop."""
        if self.wg is not None:
            self.wg.up(mtu=mtu)

    def setup_shaping(self) -> Shaper:
        """tc trees for the owner's rates (nothing when no rate is set)."""
        net6 = self.tunnel_v6.network if self.tunnel_v6 is not None else None
        shaper = self.ops.shaper(plan_for(self.settings, net6), self.open_journal())
        shaper.setup()
        return shaper

    def enable_forwarding(self, uplink: Uplink | None = None) -> str:
        """Turns IPv4 forwarding on (and IPv6 forwarding with NAT66); returns the IPv4 value
        found. Every value found is journaled and restored on stop."""
        journal = self.open_journal()
        previous = self.ops.set_sysctl(journal, FORWARDING, "1")
        if self.tunnel_v6 is not None:
            # With forwarding on, the kernel ignores router advertisements on links whose
            # accept_ra is 1: the uplink would lose its SLAAC default route; 2 keeps them.
            # (A dotted name such as a VLAN cannot be written as a sysctl key here: skipped.)
            if uplink is not None and "." not in uplink.name:
                ra = f"net.ipv6.conf.{uplink.name}.accept_ra"
                if self.ops.read_sysctl(ra) == "1":
                    self.ops.set_sysctl(journal, ra, "2")
            was = self.ops.set_sysctl(journal, FORWARDING_V6, "1")
            log.info("ipv6 forwarding on", extra={"was": was})
        return previous

    def apply_firewall(self, uplink: Uplink) -> None:
        """Applies the node's rules; again later, it replaces them in place (atomically)."""
        journal = self.open_journal()
        policy = build_policy(
            self.settings,
            names=self.fw_names,
            uplink=uplink.name,
            host_addresses=self.host_addresses(),
            tunnel_v6=self.tunnel_v6 if self.ipv6_active else None,
        )
        if self.firewall is None:
            self.firewall = self.ops.firewall(self.settings.firewall, self.fw_names, journal)
        self.firewall.apply(policy)
        log.info("firewall applied", extra={"backend": self.firewall.name, "uplink": uplink.name})

    def set_ipv6_active(self, active: bool, uplink: Uplink) -> None:
        """The uplink lost (or regained) internet IPv6: reject clients' IPv6 so they fail
        fast, or NAT66 it again. The interface keeps its IPv6 address meanwhile."""
        if self.tunnel_v6 is None or active == self.ipv6_active:
            return
        self.ipv6_active = active
        self.apply_firewall(uplink)

    def move_uplink(self, uplink: Uplink) -> None:
        """The default route moved: NAT follows it (established tunnels stay up)."""
        if self.firewall is None:
            return
        own = own_addresses(self.settings, self.host_addresses())
        self.firewall.update_uplink(uplink.name, own)

    # ---- teardown ----------------------------------------------------------------------

    def teardown(self) -> None:
        """Undoes every change, newest first; raises UndoError listing all failed steps."""
        if self.journal is None:
            return
        self.wg = None
        self.firewall = None
        self.journal.undo_all()
