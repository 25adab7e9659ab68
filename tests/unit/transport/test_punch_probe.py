"""The probe exchange of hole punching (higgs.transport.punch_probe) with a fake tap: the
other end's probe arrives after a few of ours, or never."""

from __future__ import annotations

import asyncio
import socket
import time

from higgs.protocol.reachability import decode_probe
from higgs.transport.punch_probe import AFTER_HEARD_S, PROBE_EVERY_S, exchange

NONCE = bytes(range(16))


class FakeTap:
    """A tap whose 'network' answers after ``answer_after`` probes (never when None)."""

    def __init__(self, answer_after: int | None, nonce: bytes = NONCE) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self.answer_after = answer_after
        self.nonce = nonce
        self.sent: list[tuple[bytes, str, int]] = []

    def fileno(self) -> int:
        return self._r.fileno()

    def send(self, payload: bytes, host: str, port: int) -> bool:
        self.sent.append((payload, host, port))
        if self.answer_after is not None and len(self.sent) == self.answer_after:
            self._w.send(b"x")
        return True

    def read(self) -> list[bytes]:
        try:
            self._r.recv(100)
        except BlockingIOError:
            return []
        return [self.nonce]

    def close(self) -> None:
        self._r.close()
        self._w.close()


def run(tap: FakeTap, window_s: float) -> bool:
    return asyncio.run(exchange(tap, NONCE, "203.0.113.10:51820", 0.0, window_s))  # type: ignore[arg-type]


def test_heard_after_a_few_probes_then_a_few_more_for_the_other_end() -> None:
    tap = FakeTap(answer_after=3)
    assert run(tap, window_s=2.0)
    assert len(tap.sent) == 3 + round(AFTER_HEARD_S / PROBE_EVERY_S)
    payload, host, port = tap.sent[0]
    assert decode_probe(payload) == NONCE
    assert (host, port) == ("203.0.113.10", 51820)
    tap.close()


def test_nothing_heard_in_the_window_is_false_and_stops_sending() -> None:
    tap = FakeTap(answer_after=None)
    started = time.monotonic()
    assert not run(tap, window_s=0.5)
    assert time.monotonic() - started < 1.5
    assert 3 <= len(tap.sent) <= 8
    tap.close()


def test_another_attempts_probe_does_not_count() -> None:
    tap = FakeTap(answer_after=2, nonce=bytes(16))
    assert not run(tap, window_s=0.5)
    tap.close()
