"""bench.connect's reading of ``ping -D`` and its per-phase medians."""

from __future__ import annotations

from bench.connect.figures import first_reply_after, last_outage, phase_medians, reply_times

PING = """PING 198.51.100.1 (198.51.100.1) 56(84) bytes of data.
[1700000000.100000] 64 bytes from 198.51.100.1: icmp_seq=1 ttl=62 time=0.5 ms
[1700000003.250000] no answer yet for icmp_seq=2
[1700000004.400000] 64 bytes from 198.51.100.1: icmp_seq=30 ttl=62 time=0.6 ms
[1700000004.500000] 64 bytes from 198.51.100.1: icmp_seq=31 ttl=62 time=0.6 ms
""".splitlines()


def test_replies_only_with_their_times() -> None:
    assert reply_times(PING) == [1700000000.1, 1700000004.4, 1700000004.5]


def test_first_reply_after_a_moment() -> None:
    served = first_reply_after(PING, 1700000001.0)
    assert served is not None
    assert abs(served - 3.4) < 1e-6
    assert first_reply_after(PING, 1700000005.0) is None


def test_phase_medians_in_connect_order_missing_counts_zero() -> None:
    runs = [
        {"total": 900.0, "route_request": 40.0, "handshake_direct": 100.0},
        {"total": 1100.0, "route_request": 60.0},
        {"route_request": 50.0, "total": 1000.0, "handshake_direct": 300.0, "new_phase": 1.0},
    ]
    out = phase_medians(runs)
    assert list(out) == ["route_request", "handshake_direct", "total", "new_phase"]
    assert out["handshake_direct"] == 100.0
    assert out["total"] == 1000.0


def _replies(*times: float) -> list[str]:
    return [
        f"[{t:.6f}] 64 bytes from 198.51.100.1: icmp_seq={i} ttl=62" for i, t in enumerate(times)
    ]


def test_last_outage_is_the_interruption_after_the_restart() -> None:
    t0 = 1000.0
    # Steady before and just after the restart (the old wireguard-go still serves), then
    # silence from 1002.0 to 1004.5, then steady again.
    lines = _replies(999.8, 999.9, 1000.1, 1001.9, 1002.0, 1004.5, 1004.6)
    lines[3:3] = _replies(*(1000.1 + 0.1 * i for i in range(1, 18)))
    assert last_outage(lines, t0) == (2.0, 4.5)


def test_no_outage_and_an_outage_across_the_restart() -> None:
    assert last_outage(_replies(999.9, 1000.05, 1000.15), 1000.0) is None
    # Nothing answered since before the restart until 1003.0: the outage starts at t0.
    out = last_outage(_replies(998.0, 1003.0, 1003.1), 1000.0)
    assert out == (0.0, 3.0)
