"""Answers the relay RTT probe (docs/protocol.md §5.5) on the host's probe port: a thread
with one UDP socket, so the forwarder's hot path never sees a probe."""

from __future__ import annotations

import logging
import select
import socket
import threading

from higgs.protocol.relay_probe import PROBE_SIZE, answer_to
from higgs.relay.metrics import RelayStats

__all__ = ["ProbeResponder"]

log = logging.getLogger(__name__)


class ProbeResponder:
    def __init__(self, relay_ip: str, port: int, stats: RelayStats) -> None:
        self.relay_ip, self.port, self.stats = relay_ip, port, stats
        self.answered = 0
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.relay_ip else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((self.relay_ip, self.port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name="relay-probe", daemon=True)
        self._thread.start()
        log.info("relay RTT probe on %s port %d", self.relay_ip, self.port)

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([sock], [], [], 0.5)
            if not ready:
                continue
            for _ in range(64):  # a bounded batch per wake-up
                try:
                    data, addr = sock.recvfrom(PROBE_SIZE + 1)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                answer = answer_to(data)
                if answer is None:
                    self.stats.drop("probe_malformed")
                    continue
                self.answered += 1  # before the send: a prober that got it sees it counted
                try:
                    sock.sendto(answer, addr)
                except OSError:
                    self.answered -= 1
                    self.stats.drop("probe_send_failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
