"""One UDP relay on one host: its journal, its kernel path (if allowed) and its forwarder.

``start`` first undoes what a crashed predecessor journaled and sweeps our table, then (kernel
mode) journals ``net.ipv4.ip_forward=1`` and the nft table; ``stop`` closes every session and
undoes the journal, which deletes the table and every conntrack entry of ours.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from higgs.common.relay_ports import DEFAULT_RANGE, PortRange
from higgs.osnet import relaynat, sysctl
from higgs.osnet.journal import Journal
from higgs.osnet.relaynat import Flow, RelayNat, RelayNatNames
from higgs.osnet.runner import Runner, SubprocessRunner
from higgs.relay.binding import Addr
from higgs.relay.forwarder import Forwarder, SessionSpec
from higgs.relay.metrics import RelayStats, UdpRelayCollector

__all__ = ["Mode", "RelaySettings", "UdpRelay"]

log = logging.getLogger(__name__)

Mode = Literal["kernel", "userspace"]


@dataclass(frozen=True)
class RelaySettings:
    relay_ip: str  # an address of this host that both legs reach (IPv4 or IPv6)
    state_dir: Path
    ports: PortRange = field(default_factory=lambda: PortRange(*DEFAULT_RANGE))
    instance: str = ""
    kernel: bool = True  # False: the userspace forwarder carries everything


class _Kernel:
    """:class:`~higgs.relay.forwarder.KernelPath` over the osnet table."""

    def __init__(self, nat: RelayNat) -> None:
        self.nat = nat

    def add(self, port: int, client: Addr, node: Addr) -> None:
        self.nat.add(Flow(port, client, node))

    def delete(self, port: int, client: Addr, node: Addr) -> None:
        self.nat.delete(Flow(port, client, node))


class UdpRelay:
    def __init__(self, settings: RelaySettings, *, runner: Runner | None = None) -> None:
        self.settings = settings
        self.runner: Runner = runner if runner is not None else SubprocessRunner()
        self.names = RelayNatNames.for_instance(settings.instance)
        self.stats = RelayStats(ports_total=len(settings.ports))
        self.mode: Mode = "userspace"
        self.why = "not started"
        self._journal: Journal | None = None
        self._nat: RelayNat | None = None
        self._forwarder: Forwarder | None = None
        self.collector = UdpRelayCollector(self.stats, self.kernel_counters)

    def kernel_counters(self) -> tuple[int, int]:
        return self._nat.counters() if self._nat is not None else (0, 0)

    @property
    def forwarder(self) -> Forwarder:
        if self._forwarder is None:
            raise RuntimeError("the UDP relay is not started")
        return self._forwarder

    def start(self) -> None:
        s = self.settings
        journal = Journal(s.state_dir / "journal.json", runner=self.runner)
        try:
            journal.replay()
            if shutil.which("nft") is not None:
                relaynat.sweep(self.names, self.runner)
            nat: RelayNat | None = None
            if not s.kernel:
                self.why = "kernel forwarding switched off"
            elif ":" in s.relay_ip:
                # The nft table and its maps are IPv4 (docs/protocol.md §5.3).
                self.why = "kernel forwarding is IPv4 only: IPv6 flows take the userspace path"
            elif not RelayNat.is_supported(self.runner):
                self.why = "nftables or conntrack unavailable here"
            else:
                nat = RelayNat(
                    self.names,
                    s.relay_ip,
                    (s.ports.first, s.ports.last),
                    journal=journal,
                    runner=self.runner,
                )
                with journal.transaction("UDP relay kernel path"):
                    sysctl.set(journal, "net.ipv4.ip_forward", "1", runner=self.runner)
                    nat.install()
                self.why = "bound flows are forwarded by nftables"
            if nat is None:
                relaynat.journal_flush(journal, s.relay_ip, s.ports.first, s.ports.last)
            self._nat = nat
            self.mode = "kernel" if nat is not None else "userspace"
            forwarder = Forwarder(
                s.relay_ip, self.stats, kernel=_Kernel(nat) if nat is not None else None
            )
            forwarder.start()
        except BaseException:
            journal.close()
            raise
        self._journal, self._forwarder = journal, forwarder
        log.info("UDP relay on %s ports %d-%d: %s (%s)", s.relay_ip, s.ports.first,
                 s.ports.last, self.mode, self.why)  # fmt: skip

    def open(self, spec: SessionSpec) -> None:
        if spec.port not in self.settings.ports:
            raise ValueError(f"relay port {spec.port} is outside {self.settings.ports}")
        self.forwarder.add(spec)

    def close(self, port: int) -> None:
        self.forwarder.remove(port)

    def ports(self) -> set[int]:
        return self.forwarder.ports()

    def legs(self) -> dict[int, tuple[Addr | None, Addr | None]]:
        """Observed (client, node) public addresses per port: what hole punching reads."""
        return self.forwarder.legs()

    def stop(self) -> None:
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder = None
        if self._journal is not None:
            try:
                self._journal.undo_all()
            finally:
                self._journal.close()
                self._journal = None
        self._nat = None
