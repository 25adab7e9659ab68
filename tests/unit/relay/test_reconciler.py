"""The relay's reconciliation loop reads its sessions once a second, or at once when the
server in the same process leased a port (``kick``): a client's first handshake must not
reach a port the relay has not opened yet."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from higgs.relay.forwarder import SessionSpec
from higgs.relay.metrics import RelayStats
from higgs.relay.runner import STATUS_FILE, Reconciler
from higgs.relay.service import UdpRelay
from tests.unit.relay import vectors


class FakeRelay:
    """What the loop touches of a UdpRelay: the ports it opens and closes."""

    def __init__(self, state_dir: Path) -> None:
        self.settings = SimpleNamespace(state_dir=state_dir, relay_ip="192.0.2.1")
        self.stats = RelayStats()
        self.mode, self.why = "userspace", ""
        self.opened: list[int] = []

    def open(self, spec: SessionSpec) -> None:
        self.opened.append(spec.port)

    def close(self, port: int) -> None:
        self.opened.remove(port)

    def legs(self) -> dict[int, Any]:
        return {}

    def ports(self) -> set[int]:
        return set(self.opened)

    def kernel_counters(self) -> tuple[int, int]:
        return 0, 0


def test_a_kick_opens_a_new_lease_without_waiting_for_the_next_pass(tmp_path: Path) -> None:
    leases: list[SessionSpec] = []
    relay = FakeRelay(tmp_path)
    # A long interval: only a kick can make the second pass happen within the test.
    loop = Reconciler(cast(UdpRelay, relay), lambda: list(leases), interval_s=30.0)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not (tmp_path / STATUS_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # the first pass ran
        leases.append(SessionSpec("s1", 40001, vectors.CLIENT_PUB, vectors.NODE_PUB))
        loop.kick()
        deadline = time.monotonic() + 5
        while relay.opened != [40001] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert relay.opened == [40001]
    finally:
        stop.set()
        loop.kick()
        thread.join(5)
    assert not thread.is_alive()  # the stop needs no 30 s pass either
