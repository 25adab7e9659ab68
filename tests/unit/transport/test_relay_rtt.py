"""A relay host's probe responder timed by the node's and client's prober, on loopback."""

from __future__ import annotations

import socket

from higgs.relay.metrics import RelayStats
from higgs.relay.probe import ProbeResponder
from higgs.transport.relay_rtt import measure_all, measure_one


async def test_the_prober_times_a_responding_relay_and_skips_a_silent_one() -> None:
    stats = RelayStats()
    responder = ProbeResponder("127.0.0.1", 0, stats)
    responder.start()
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        rtt = await measure_one("127.0.0.1", responder.port)
        assert rtt is not None
        assert 0 <= rtt < 500
        assert responder.answered == 3  # every probe of the round answered
        got = await measure_all(
            [("127.0.0.1", responder.port), ("127.0.0.2", silent.getsockname()[1])],
            timeout_s=0.2,
        )
        assert set(got) == {"127.0.0.1"}
    finally:
        silent.close()
        responder.stop()


async def test_a_malformed_probe_is_dropped_and_counted() -> None:
    stats = RelayStats()
    responder = ProbeResponder("127.0.0.1", 0, stats)
    responder.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.3)
    try:
        sock.sendto(b"HGRP\x02not-a-ping", ("127.0.0.1", responder.port))
        try:
            sock.recvfrom(64)
            answered = True
        except TimeoutError:
            answered = False
        assert not answered
        assert stats.drops.get("probe_malformed") == 1
    finally:
        sock.close()
        responder.stop()
