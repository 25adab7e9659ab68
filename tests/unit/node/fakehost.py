"""A host in memory for the node agent (:class:`higgs.node.hostops.HostOps`).

It keeps what is in effect (links, sysctls, firewall, shaping) and every change and undo in
order. Like the osnet primitives it stands for, each change journals its undo in the journal
it is handed before it is made; the undo is data (an ``argv`` op the journal runs through this
host as its runner), so the node's real :class:`~higgs.osnet.journal.Journal` carries it out,
and a journal left behind can be replayed by another NodeHost over the same fake host.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from higgs.common.keys import PrivateKey
from higgs.node.hostops import Firewall, IPInterface, Shaper, Tunnel
from higgs.osnet import undo
from higgs.osnet.changes import ChangeLog
from higgs.osnet.discovery import OnChange, Uplink, UplinkWatcher
from higgs.osnet.errors import OsnetError
from higgs.osnet.firewall import FirewallNames, FirewallStatus, Plan
from higgs.osnet.firewall.plan import IPAddress
from higgs.osnet.journal import Journal
from higgs.osnet.names import OwnedNames
from higgs.osnet.runner import CommandResult, RecordingRunner, Runner
from higgs.osnet.shaping import ShapingPlan
from higgs.osnet.wireguard import Peer, PeerStats

FAKE = "fakehost-undo"


class FakeFailure(OsnetError):
    """The change the test asked to fail."""


@dataclass
class FakeInterface:
    addresses: list[str] = field(default_factory=list)
    mtu: int | None = None
    up: bool = False
    listen_port: int | None = None
    # Public key -> endpoint of the peers it had (a crashed run's interface, as `wg show`).
    peer_endpoints: dict[str, str] = field(default_factory=dict)


def uplink(name: str = "eth0", mtu: int = 1500) -> Uplink:
    return Uplink(
        name=name, index=2, family=4, gateway="192.0.2.1", metric=0, mtu=mtu, addresses=()
    )


class FakeHost:
    """The host (and the runner its journals undo through)."""

    def __init__(self, up: Uplink | None = None, *, ipv6: bool = False) -> None:
        self.uplink = up if up is not None else uplink()
        self.ipv6 = ipv6
        self.sysctls: dict[str, str] = {
            "net.ipv4.ip_forward": "0",
            "net.ipv6.conf.all.forwarding": "0",
            f"net.ipv6.conf.{self.uplink.name}.accept_ra": "1",
        }
        self.interfaces: dict[str, FakeInterface] = {}
        self.firewall_uplink: str | None = None  # None: no rules of ours
        self.shaping: str | None = None  # the IFB of our shaping trees
        self.events: list[str] = []  # "do X" / "undo X", in order
        self.unjournaled: list[str] = []  # changes made before their undo was on disk
        self.fail: set[str] = set()  # change kinds that fail (after being half made)
        self.fail_undo: set[str] = set()  # undo kinds that fail
        # Every command is an undo of ours (or a test failure): answered from this model.
        self._runner = RecordingRunner(answer=self._undo)

    # ---- the runner the journal undoes through -------------------------------------------

    @property
    def runner(self) -> Runner:
        return self._runner

    def _undo(self, argv: tuple[str, ...]) -> CommandResult:
        if not argv or argv[0] != FAKE:
            raise AssertionError(f"the node ran a command on the host directly: {list(argv)}")
        kind, *args = argv[1:]
        if kind in self.fail_undo:
            raise FakeFailure(f"undo {kind} failed")
        self.events.append(f"undo {kind} {' '.join(args)}".strip())
        if kind == "sysctl":
            self.sysctls[args[0]] = args[1]
        elif kind == "link":
            self.interfaces.pop(args[0], None)
        elif kind == "firewall":
            self.firewall_uplink = None
        elif kind == "shaping":
            self.shaping = None
        return CommandResult(argv, 0, "", "")

    # ---- changing, the way every osnet primitive does ------------------------------------

    def change(
        self,
        journal: ChangeLog,
        kind: str,
        what: str,
        undo_args: Sequence[str],
        apply: Callable[[], None],
    ) -> None:
        record = undo.argv([FAKE, kind, *undo_args])

        def make() -> None:
            if not self._on_disk(journal.path, record):
                self.unjournaled.append(what)
            self.events.append(f"do {kind} {what}")
            apply()
            if kind in self.fail:
                raise FakeFailure(f"{kind} failed half way")

        journal.step(f"{kind} {what}", record, make)

    @staticmethod
    def _on_disk(path: Path, record: Mapping[str, object]) -> bool:
        try:
            entries = json.loads(path.read_text())["entries"]
        except FileNotFoundError:
            return False
        return any(e["undo"] == record for e in entries)

    # ---- HostOps -------------------------------------------------------------------------

    def open_journal(self, path: Path) -> Journal:
        return Journal(path, runner=self.runner)

    def default_uplink(self, exclude: Sequence[str]) -> Uplink:
        assert self.uplink.name not in exclude
        return self.uplink

    def ipv6_uplink(self, exclude: Sequence[str]) -> Uplink | None:
        return self.uplink if self.ipv6 else None

    def addresses(self, exclude: Sequence[str]) -> list[IPInterface]:
        import ipaddress

        return [ipaddress.ip_interface("192.0.2.10/24")]

    def read_sysctl(self, key: str) -> str:
        return self.sysctls[key]

    def firewall_status(self, names: FirewallNames) -> FirewallStatus | None:
        return None

    def uplink_watcher(
        self, on_change: OnChange, *, exclude: Sequence[str], interval: float
    ) -> UplinkWatcher:
        del interval  # the fake host is polled at once, so the tests stay fast
        return FakeWatcher(self, on_change)

    def set_sysctl(self, journal: ChangeLog, key: str, value: str) -> str:
        previous = self.sysctls[key]
        if previous != value:

            def write() -> None:
                self.sysctls[key] = value

            self.change(journal, "sysctl", f"{key}={value}", [key, previous], write)
        return previous

    def tunnel(self, name: str, journal: ChangeLog) -> Tunnel:
        return FakeTunnel(self, name, journal)

    def firewall(self, backend: str, names: FirewallNames, journal: ChangeLog) -> Firewall:
        return FakeFirewall(self, journal)

    def shaper(self, plan: ShapingPlan, journal: Journal) -> Shaper:
        return FakeShaper(self, plan, journal)

    def peer_endpoints(self, name: str) -> dict[str, str]:
        iface = self.interfaces.get(name)
        self.events.append(f"read peers {name}")
        return dict(iface.peer_endpoints) if iface is not None else {}

    def recover(
        self, journal_path: Path, names: OwnedNames, fw_names: FirewallNames, ifb: str
    ) -> tuple[int, list[str]]:
        with Journal(journal_path, runner=self.runner) as journal:
            pending = len(journal)
            journal.replay()
        return pending, []


class FakeWatcher(UplinkWatcher):
    def __init__(self, host: FakeHost, on_change: OnChange) -> None:
        super().__init__(on_change, interval=0.01)
        self._host = host

    def _read(self) -> Uplink | None:
        return self._host.uplink


class FakeTunnel:
    def __init__(self, host: FakeHost, name: str, journal: ChangeLog) -> None:
        self.host, self.name, self.journal = host, name, journal

    def _iface(self) -> FakeInterface:
        iface = self.host.interfaces.get(self.name)
        if iface is None:
            raise OsnetError(f"no interface {self.name}")
        return iface

    def create(self) -> None:
        if self.name in self.host.interfaces:
            raise OsnetError(f"interface {self.name} already exists")

        def add() -> None:
            self.host.interfaces[self.name] = FakeInterface()

        self.host.change(self.journal, "link", self.name, [self.name], add)

    def configure(self, private_key: PrivateKey, *, listen_port: int | None = None) -> None:
        self._iface().listen_port = listen_port

    def set_addresses(self, addresses: Iterable[str]) -> None:
        self._iface().addresses = list(addresses)

    def up(self, mtu: int | None = None) -> None:
        iface = self._iface()
        iface.up, iface.mtu = True, mtu

    def peers(self) -> tuple[PeerStats, ...]:
        return ()

    def set_peer(self, peer: Peer) -> None:
        raise AssertionError("no peer in these tests")

    def remove_peer(self, public_key: str) -> None:
        raise AssertionError("no peer in these tests")


class FakeFirewall:
    name = "fake"

    def __init__(self, host: FakeHost, journal: ChangeLog) -> None:
        self.host, self.journal = host, journal
        self.plans: list[Plan] = []

    def apply(self, plan: Plan) -> None:
        uplink_if = getattr(plan, "uplink_if", None) or self.host.uplink.name

        def put() -> None:
            self.host.firewall_uplink = uplink_if

        if not self.plans:  # like the real backends: journaled once, replaced in place after
            self.host.change(self.journal, "firewall", uplink_if, [], put)
        else:
            self.host.events.append(f"do firewall-replace {uplink_if}")
            put()
        self.plans.append(plan)

    def update_uplink(
        self, uplink_if: str, own_addresses: tuple[IPAddress, ...] | None = None
    ) -> None:
        self.host.events.append(f"do firewall-uplink {uplink_if}")
        self.host.firewall_uplink = uplink_if


class FakeShaper:
    def __init__(self, host: FakeHost, plan: ShapingPlan, journal: Journal) -> None:
        self.host, self.plan, self.journal = host, plan, journal

    def setup(self) -> None:
        if not (self.plan.shapes_down or self.plan.shapes_up):
            return

        def build() -> None:
            self.host.shaping = self.plan.ifb_if

        self.host.change(self.journal, "shaping", self.plan.ifb_if, [], build)

    def update(self, addresses: Iterable[str]) -> None:
        pass
