"""Keeps a running :class:`~higgs.relay.service.UdpRelay` in step with a session source.

A source is a callable returning every session the relay should serve now; the loop opens
what is new, closes what is gone, and writes a status file (mode, ports, observed legs,
counters) that tests, ``bosonserver sessions`` on the relay host and operators can read.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from higgs.common.retrylog import RetryLog
from higgs.relay.binding import Addr
from higgs.relay.forwarder import SessionSpec
from higgs.relay.service import UdpRelay

__all__ = ["STATUS_FILE", "Reconciler", "host_stats", "status_of"]

log = logging.getLogger(__name__)

STATUS_FILE = "relay-status.json"

Source = Callable[[], list[SessionSpec]]


def _counters(relay: UdpRelay) -> dict[str, Any]:
    """What the relay moved and dropped, by the kernel and by userspace."""
    packets, octets = relay.kernel_counters()
    s = relay.stats
    return {
        "kernel_packets": packets,
        "kernel_bytes": octets,
        "userspace_packets": s.user_packets,
        "userspace_bytes": s.user_bytes,
        "binds": s.binds,
        "rebinds": s.rebinds,
        "drops": dict(s.drops),
    }


def status_of(relay: UdpRelay) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "mode": relay.mode,
        "why": relay.why,
        "relay_ip": relay.settings.relay_ip,
        "legs": {
            str(port): {"client": _addr(c), "node": _addr(n)}
            for port, (c, n) in sorted(relay.legs().items())
        },
        **_counters(relay),
    }


def host_stats(relay: UdpRelay) -> dict[str, Any]:
    """The snapshot a relay host beats with (the dashboard's relay page shows it per host)."""
    return {
        "mode": relay.mode,
        "ports_leased": len(relay.ports()),
        "ports_total": relay.stats.ports_total,
        **_counters(relay),
    }


def _addr(addr: tuple[str, int] | None) -> str | None:
    if addr is None:
        return None
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


class Reconciler:
    def __init__(
        self,
        relay: UdpRelay,
        source: Source,
        *,
        interval_s: float = 1.0,
        on_legs: Callable[[dict[int, tuple[Addr | None, Addr | None]]], None] | None = None,
        on_beat: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.relay, self.source, self.interval_s = relay, source, interval_s
        self.on_legs = on_legs
        self.on_beat = on_beat
        self._specs: dict[int, SessionSpec] = {}
        self._legs_told: dict[int, tuple[Addr | None, Addr | None]] = {}
        # The database away: one line when it goes, a reminder a minute, one when it is back.
        self._read_log = RetryLog(log, "UDP relay: reading sessions")
        self._legs_log = RetryLog(log, "UDP relay: recording the bound legs")
        self._beat_log = RetryLog(log, "UDP relay: the host heartbeat")
        self._wake = threading.Event()

    def kick(self) -> None:
        """Read the sessions now (a new lease): from any thread, never blocks."""
        self._wake.set()

    def sync(self) -> None:
        try:
            wanted = {s.port: s for s in self.source()}
        except Exception as exc:  # a bad source must not stop the sessions already served
            self._read_log.failed(exc)
            return
        self._read_log.ok()
        for port, spec in list(self._specs.items()):
            if wanted.get(port) != spec:
                self.relay.close(port)
                del self._specs[port]
        for port, spec in wanted.items():
            if port not in self._specs:
                try:
                    self.relay.open(spec)
                except (OSError, ValueError) as exc:
                    log.warning("UDP relay: session %s port %d: %s", spec.session_id, port, exc)
                    continue
                self._specs[port] = spec

    def write_status(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(status_of(self.relay)))
        tmp.replace(path)

    def tell_legs(self) -> None:
        legs = self.relay.legs()
        if self.on_legs is None or legs == self._legs_told:
            return
        try:
            self.on_legs(legs)
        except Exception as exc:
            self._legs_log.failed(exc)
            return
        self._legs_log.ok()
        self._legs_told = legs

    def beat(self) -> None:
        if self.on_beat is None:
            return
        try:
            self.on_beat(host_stats(self.relay))
        except Exception as exc:  # the database away: the sessions already served go on
            self._beat_log.failed(exc)
        else:
            self._beat_log.ok()

    def run(self, stop: threading.Event) -> None:
        status = self.relay.settings.state_dir / STATUS_FILE
        try:
            while not stop.is_set():
                self.sync()
                self.tell_legs()
                self.beat()
                self.write_status(status)
                # The next pass after interval_s, or as soon as the server leased a port.
                if self._wake.wait(self.interval_s):
                    self._wake.clear()
        finally:
            status.unlink(missing_ok=True)
