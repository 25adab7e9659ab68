"""The client's host side: WireGuard, routing, DNS and the kill switch, through osnet.

Each change is journaled by the osnet module that makes it, so ``disconnect``, a failed
connect (journal transaction) and ``cleanup`` after a crash all undo the same list. Names
(interface, nft table, routing table, fwmark, rule priorities) come from osnet's
:class:`~higgs.osnet.names.OwnedNames` for this client instance, so two clients on one host
(tests do that) never touch each other's objects.

Moving to another node (:meth:`LinuxTunnelHost.reset_tunnel`) takes down the interface and its
routes but leaves the kill switch in place, so nothing leaks while the new route comes up.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Sequence

from higgs.client.connect import Endpoint, PeerStats
from higgs.client.settings import ClientSettings
from higgs.client.timings import PhaseTimer
from higgs.common.keys import PrivateKey
from higgs.osnet import discovery, resolver, routes, sweep
from higgs.osnet.errors import OsnetError
from higgs.osnet.firewall import Endpoint as FirewallEndpoint
from higgs.osnet.firewall import (
    FirewallBackend,
    FirewallNames,
    KillSwitchPolicy,
    NftBackend,
    get_backend,
    other_filters,
)
from higgs.osnet.firewall.watch import RuleWatch
from higgs.osnet.journal import Journal
from higgs.osnet.names import OwnedNames
from higgs.osnet.wireguard import Peer, WireGuard

__all__ = ["LinuxTunnelHost", "cleanup_host", "replay_journal"]

log = logging.getLogger(__name__)

# Where nft monitor cannot see changes (legacy iptables): how often the kill switch is checked.
KILL_SWITCH_CHECK_S = 1.0


def owned_names(settings: ClientSettings) -> OwnedNames:
    return OwnedNames.for_instance("client", settings.instance, settings.interface)


class LinuxTunnelHost:
    def __init__(self, settings: ClientSettings, journal: Journal) -> None:
        self.settings = settings
        self.journal = journal
        self.names = owned_names(settings)
        self.fwmark = self.names.fwmark
        self.wg = WireGuard(settings.interface, journal=journal)
        self._firewall: FirewallBackend | None = None
        self._v6 = False
        self._peer_key: str | None = None
        self._peer_ips: tuple[str, ...] = ()
        self._tunnel_first_entry: int | None = None
        self._kill_switch_entries: set[int] = set()

    # --- WireGuard ---------------------------------------------------------------------------

    def create(
        self, private_key: PrivateKey, address: str, mtu: int, timer: PhaseTimer | None = None
    ) -> None:
        timer = timer or PhaseTimer()
        self._tunnel_first_entry = self._next_entry_id()
        with timer.phase("interface"):
            self.wg.create()
        with timer.phase("wireguard_config"):
            self.wg.configure(private_key, fwmark=self.fwmark)
        # "10.77.0.5/32" or, when the node forwards IPv6, "10.77.0.5/32, fd…::5/128".
        addresses = [a.strip() for a in address.split(",") if a.strip()]
        with timer.phase("addresses"):
            self.wg.set_addresses(addresses)
            self.wg.up(mtu)
        self._v6 = any(ipaddress.ip_interface(a).version == 6 for a in addresses)

    def set_peer(
        self,
        public_key: str,
        endpoint: str,
        allowed_ips: Sequence[str],
        keepalive: int | None,
    ) -> None:
        # Remove and re-add instead of updating: a fresh peer sends its handshake initiation at
        # once to the new endpoint, instead of after the 5 s retry of the old attempt.
        if self._peer_key is not None:
            self.wg.remove_peer(self._peer_key)
        self.wg.set_peer(
            Peer(
                public_key=public_key,
                allowed_ips=tuple(allowed_ips),
                endpoint=endpoint,
                persistent_keepalive=keepalive or 0,
            )
        )
        self._peer_key = public_key
        self._peer_ips = tuple(allowed_ips)

    def move_peer(self, endpoint: str, keepalive: int | None) -> None:
        """Moves the peer to another path in place: its session keys stay, so traffic goes on
        with no new handshake (hole punching's make-before-break; higgs.client.punch)."""
        if self._peer_key is None:
            raise ValueError("no peer to move")
        self.wg.set_peer(
            Peer(
                public_key=self._peer_key,
                allowed_ips=self._peer_ips,
                endpoint=endpoint,
                persistent_keepalive=keepalive or 0,
            )
        )

    def peer_stats(self) -> PeerStats | None:
        if self._peer_key is None:
            return None
        try:
            peer = self.wg.dump().peer(self._peer_key)
        except OsnetError as exc:
            log.debug("wg dump failed: %s", exc)
            return None
        if peer is None:
            return None
        return PeerStats(
            latest_handshake=float(peer.latest_handshake or 0),
            rx_bytes=peer.rx_bytes,
            tx_bytes=peer.tx_bytes,
            endpoint=peer.endpoint,
        )

    def listen_port(self) -> int:
        return self.wg.dump().listen_port

    # --- routing -----------------------------------------------------------------------------

    def route(self, *, full: bool, prefixes: Sequence[str], exempt: Sequence[str] = ()) -> None:
        if full:
            # The server and relay stay reachable outside the tunnel: a host route for each in
            # our table, via the uplink, so renewing and failing over work while the tunnel
            # (or the node behind it) is down. WireGuard's own packets carry the fwmark.
            # (A mark on our REST sockets cannot do it: httpx sets socket options only after
            # connect, so the SYN would already have gone into the tunnel.)
            if exempt:
                uplink = discovery.default_uplink(4, exclude=[self.settings.interface])
                for ip in exempt:
                    addr = ipaddress.ip_address(ip)
                    on_link = any(addr in a.network for a in uplink.addresses)
                    routes.add_route(
                        self.journal,
                        routes.Route(
                            f"{addr}/32",
                            dev=uplink.name,
                            gateway=None if on_link else uplink.gateway,
                            table=self.names.table_id,
                        ),
                    )
            # IPv6 goes into the tunnel only when the tunnel has an IPv6 address; otherwise the
            # kill switch blocks it (no IPv6 leak around an IPv4-only tunnel).
            routes.full_tunnel(self.journal, self.names, families=(4, 6) if self._v6 else (4,))
        else:
            for prefix in prefixes:
                net = ipaddress.ip_network(prefix, strict=False)
                # IPv6 prefixes only when the tunnel carries IPv6 (else the kill switch
                # rejects them, as everything outside the tunnel).
                if net.version == 4 or self._v6:
                    routes.add_route(
                        self.journal, routes.Route(str(net), dev=self.settings.interface)
                    )

    # --- DNS ---------------------------------------------------------------------------------

    def set_dns(self, servers: Sequence[str]) -> None:
        resolver.set_nameservers(self.journal, servers, path=self.settings.resolv_conf)

    # --- kill switch -------------------------------------------------------------------------

    def kill_switch(self, *, allow_endpoints: Sequence[Endpoint]) -> None:
        # Our own control sockets and WireGuard's carry the fwmark; the explicit endpoints
        # are the belt to those braces.
        endpoints = tuple(_endpoints(allow_endpoints))
        plan = KillSwitchPolicy(
            names=FirewallNames.of(self.names),
            tunnel_if=self.settings.interface,
            endpoints=endpoints,
            fwmark=self.fwmark,
            wg_listen_port=self._wg_port(),
        )
        # A second apply replaces the rules in place (atomically with nft): there is no
        # moment without a kill switch while the tunnel moves to a new route.
        first = self._next_entry_id()
        if self._firewall is None:
            self._firewall = get_backend(
                "auto", FirewallNames.of(self.names), self.journal.runner, self.journal
            )
        if plan.wg_listen_port is not None:
            others = (
                other_filters(self.journal.runner, plan.names.table)
                if isinstance(self._firewall, NftBackend)
                else ["iptables backend"]
            )
            if others:
                # Untracked datagrams would not be `established` to the host's own firewall.
                log.info("WireGuard's datagrams stay tracked: the host filters too (%s)", others)
                plan = dataclasses.replace(plan, wg_listen_port=None)
        self._firewall.apply(plan)
        self._kill_switch_entries |= {e.id for e in self.journal.entries if e.id >= first}

    def _wg_port(self) -> int | None:
        """WireGuard's UDP port, so the kill switch can leave its datagrams untracked; None
        (tracked, as any other traffic) when the interface cannot say."""
        try:
            port = self.listen_port()
        except OsnetError as exc:
            log.info("kill switch without WireGuard's port (%s): its datagrams stay tracked", exc)
            return None
        return port or None

    def kill_switch_watch(self) -> RuleWatch | None:
        """The watch that puts the kill switch back when another program removes it (None
        before the kill switch is on). Meanwhile the full-tunnel routes still send everything
        into the tunnel; the switch is what keeps it there when they do not."""
        if self._firewall is None:
            return None
        return RuleWatch(self._firewall, what="kill switch", poll_s=KILL_SWITCH_CHECK_S)

    # --- moving to another node --------------------------------------------------------------

    def reset_tunnel(self) -> None:
        """Undoes the interface, its routes and DNS (everything but the kill switch)."""
        if self._tunnel_first_entry is None:
            return
        for entry in reversed(self.journal.entries):
            if entry.id >= self._tunnel_first_entry and entry.id not in self._kill_switch_entries:
                self.journal.undo(entry)
        self._peer_key = None

    def _next_entry_id(self) -> int:
        entries = self.journal.entries
        return (entries[-1].id + 1) if entries else 0


def _endpoints(endpoints: Sequence[Endpoint]) -> list[FirewallEndpoint]:
    out = []
    for ep in endpoints:
        try:
            addr = ipaddress.ip_address(ep.host)
        except ValueError:
            continue  # a hostname: covered by the fwmark our sockets carry
        out.append(FirewallEndpoint(addr, ep.port, ep.protocol))
    return out


def replay_journal(settings: ClientSettings) -> int:
    """Undoes whatever the journal holds (no daemon must be running); returns the count."""
    if not settings.journal_file.exists():
        return 0
    with Journal(settings.journal_file) as journal:
        return journal.replay()


def cleanup_host(settings: ClientSettings) -> str:
    """``higgsvpn cleanup``: replay the journal, then sweep anything named ours."""
    undone = replay_journal(settings)
    report = sweep.sweep(owned_names(settings))
    settings.status_file.unlink(missing_ok=True)
    settings.pid_file.unlink(missing_ok=True)
    report.raise_for_failures()
    return f"undid {undone} journaled change(s); swept {len(report.removed)} leftover object(s)"
