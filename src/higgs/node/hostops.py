"""The host operations the node is made of, behind one small interface.

:class:`~higgs.node.host.NodeHost` decides *what* to change (which sysctls, which addresses,
which firewall policy, in which order, all into one journal); :class:`HostOps` is *how*: the
reads (uplink, addresses, sysctl values) and the primitives that change the host, each of
which journals its own undo in the journal it is handed before it changes anything (as the
osnet modules do). :class:`OsnetHostOps` is the real one, over :mod:`higgs.osnet`; unit tests
hand the agent a fake one that keeps the host's state in memory (tests/unit/node).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from higgs.common.keys import PrivateKey
from higgs.node.shaping import Shaper as NodeShaper
from higgs.osnet import cleanup as osnet_cleanup
from higgs.osnet import discovery, firewall, netlink, sysctl, undo
from higgs.osnet.changes import ChangeLog
from higgs.osnet.discovery import OnChange, Uplink, UplinkWatcher
from higgs.osnet.errors import OsnetError
from higgs.osnet.firewall import FirewallNames, FirewallStatus, Plan
from higgs.osnet.firewall.plan import IPAddress
from higgs.osnet.journal import Journal
from higgs.osnet.names import OwnedNames
from higgs.osnet.runner import Runner, SubprocessRunner
from higgs.osnet.shaping import ShapingPlan
from higgs.osnet.wireguard import Peer, PeerStats, WireGuard, parse_dump

__all__ = ["Firewall", "HostOps", "IPInterface", "OsnetHostOps", "Shaper", "Tunnel"]

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class Tunnel(Protocol):
    """The node's WireGuard interface (:class:`higgs.osnet.wireguard.WireGuard`)."""

    def create(self) -> None: ...

    def configure(self, private_key: PrivateKey, *, listen_port: int | None = None) -> None: ...

    def set_addresses(self, addresses: Iterable[str]) -> None: ...

    def up(self, mtu: int | None = None) -> None: ...

    def peers(self) -> tuple[PeerStats, ...]: ...

    def set_peer(self, peer: Peer) -> None: ...

    def remove_peer(self, public_key: str) -> None: ...


class Firewall(Protocol):
    """The node's packet filter (a :class:`higgs.osnet.firewall.FirewallBackend`)."""

    @property
    def name(self) -> str: ...

    def apply(self, plan: Plan) -> None: ...

    def update_uplink(
        self, uplink_if: str, own_addresses: tuple[IPAddress, ...] | None = None
    ) -> None: ...


class Shaper(Protocol):
    """The tc trees of the owner's rates (:class:`higgs.node.shaping.Shaper`)."""

    def setup(self) -> None: ...

    def update(self, addresses: Iterable[str]) -> None: ...


class HostOps(Protocol):
    """Everything the node reads from or changes on the host. Every change is journaled by
    the operation itself, in the journal it is given, before the change is made."""

    @property
    def runner(self) -> Runner: ...

    def open_journal(self, path: Path) -> Journal: ...

    # reads
    def default_uplink(self, exclude: Sequence[str]) -> Uplink: ...

    def ipv6_uplink(self, exclude: Sequence[str]) -> Uplink | None: ...

    def addresses(self, exclude: Sequence[str]) -> list[IPInterface]: ...

    def read_sysctl(self, key: str) -> str: ...

    def firewall_status(self, names: FirewallNames) -> FirewallStatus | None: ...

    def uplink_watcher(
        self, on_change: OnChange, *, exclude: Sequence[str], interval: float
    ) -> UplinkWatcher: ...

    # changes
    def set_sysctl(self, journal: ChangeLog, key: str, value: str) -> str: ...

    def tunnel(self, name: str, journal: ChangeLog) -> Tunnel: ...

    def firewall(self, backend: str, names: FirewallNames, journal: ChangeLog) -> Firewall: ...

    def shaper(self, plan: ShapingPlan, journal: Journal) -> Shaper: ...

    def recover(
        self, journal_path: Path, names: OwnedNames, fw_names: FirewallNames, ifb: str
    ) -> tuple[int, list[str]]:
        """Undoes what the journal at ``journal_path`` holds, then sweeps ``names`` (the
        interface, the firewall, the shaping IFB). Returns (changes undone, problems)."""
        ...

    def peer_endpoints(self, name: str) -> dict[str, str]:
        """Public key -> endpoint of the peers on the WireGuard interface ``name`` as it is
        now (a crashed run's, before the recovery removes it); empty when there is none."""
        ...


def all_addresses(exclude: Sequence[str] = ()) -> list[IPInterface]:
    """Every address on every interface of this host (namespace), except ``exclude``'s."""
    skip = set(exclude)

    def dump(ipr: Any) -> list[IPInterface]:
        names = {link["index"]: link.get("ifname") for link in ipr.link("dump")}
        out: list[IPInterface] = []
        for msg in ipr.addr("dump"):
            addr = msg.get("address")
            if addr is None or names.get(msg.get("index")) in skip:
                continue
            out.append(ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}"))
        return out

    return netlink.call(dump)


class OsnetHostOps:
    """The real host: netlink, /proc/sys, wg, nft/iptables and tc, through osnet."""

    def __init__(self, runner: Runner | None = None) -> None:
        self._runner: Runner = runner if runner is not None else SubprocessRunner()

    @property
    def runner(self) -> Runner:
        return self._runner

    def open_journal(self, path: Path) -> Journal:
        return Journal(path, runner=self._runner)

    def default_uplink(self, exclude: Sequence[str]) -> Uplink:
        return discovery.default_uplink(exclude=exclude)

    def ipv6_uplink(self, exclude: Sequence[str]) -> Uplink | None:
        return discovery.ipv6_uplink(exclude=exclude)

    def addresses(self, exclude: Sequence[str]) -> list[IPInterface]:
        return all_addresses(exclude)

    def read_sysctl(self, key: str) -> str:
        return sysctl.read(key, runner=self._runner)

    def firewall_status(self, names: FirewallNames) -> FirewallStatus | None:
        for name in ("nft", "iptables"):
            try:
                status = firewall.get_backend(name, names, self._runner).status()
            except Exception:  # noqa: S112 - a backend this host lacks simply has no rules
                continue
            if status.applied:
                return status
        return None

    def uplink_watcher(
        self, on_change: OnChange, *, exclude: Sequence[str], interval: float
    ) -> UplinkWatcher:
        return UplinkWatcher(on_change, exclude=exclude, interval=interval)

    def set_sysctl(self, journal: ChangeLog, key: str, value: str) -> str:
        return sysctl.set(journal, key, value, runner=self._runner)

    def tunnel(self, name: str, journal: ChangeLog) -> Tunnel:
        return WireGuard(name, journal=journal, runner=self._runner)

    def firewall(self, backend: str, names: FirewallNames, journal: ChangeLog) -> Firewall:
        return firewall.get_backend(backend, names, self._runner, journal)

    def shaper(self, plan: ShapingPlan, journal: Journal) -> Shaper:
        return NodeShaper(plan, journal, self._runner)

    def peer_endpoints(self, name: str) -> dict[str, str]:
        try:
            # Bounded: a read for a hint must not hold the start-up.
            result = self._runner.run(["wg", "show", name, "dump"], check=False, timeout=2)
            if not result.ok:
                return {}  # no such interface: a clean host
            dump = parse_dump(result.stdout)
        except OsnetError:
            return {}
        return {p.public_key: p.endpoint for p in dump.peers if p.endpoint is not None}

    def recover(
        self, journal_path: Path, names: OwnedNames, fw_names: FirewallNames, ifb: str
    ) -> tuple[int, list[str]]:
        report = osnet_cleanup.cleanup(journal_path, names, runner=self._runner)
        problems = [str(e) for e in report.errors]
        problems += firewall.sweep(fw_names, self._runner)
        try:
            undo.INTERFACE_DELETE.run(undo.InterfaceDelete(ifb), undo.UndoContext(self._runner))
        except OsnetError as exc:
            problems.append(f"removing {ifb}: {exc}")
        return report.undone, problems
