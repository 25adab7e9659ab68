"""Parsers of the tools' output, on output captured from the real tools on this machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.e2e.measure import parse_iperf, parse_ping
from bench.profile import parse_raw

PING = """PING 192.0.2.10 (192.0.2.10) 56(84) bytes of data.
64 bytes from 192.0.2.10: icmp_seq=1 ttl=62 time=0.873 ms
64 bytes from 192.0.2.10: icmp_seq=2 ttl=62 time=0.412 ms
64 bytes from 192.0.2.10: icmp_seq=4 ttl=62 time=1.20 ms

--- 192.0.2.10 ping statistics ---
4 packets transmitted, 3 received, 25% packet loss, time 31ms
rtt min/avg/max/mdev = 0.412/0.828/1.200/0.322 ms
"""


def test_parse_ping_reads_every_answer() -> None:
    assert parse_ping(PING) == [0.873, 0.412, 1.20]
    assert parse_ping("From 10.0.2.1 icmp_seq=1 Destination Host Unreachable") == []


def test_parse_iperf_tcp_uses_the_receiver() -> None:
    data = {
        "end": {
            "sum_sent": {"bytes": 200, "bits_per_second": 2000.0},
            "sum_received": {"bytes": 150, "bits_per_second": 1500.0},
        }
    }
    assert parse_iperf(json.dumps(data)) == (1500.0, 150.0, 0.0)


def test_parse_iperf_udp_on_3_12_discounts_loss() -> None:
    # iperf3 3.12 -u -J: one "sum" with the sender's rate and the receiver's loss.
    data = {"end": {"sum": {"bytes": 1000, "bits_per_second": 8000.0, "lost_percent": 25.0}}}
    assert parse_iperf(json.dumps(data)) == (6000.0, 750.0, 25.0)


def test_parse_iperf_error_is_named() -> None:
    with pytest.raises(RuntimeError, match="unable to connect"):
        parse_iperf(json.dumps({"start": {}, "end": {}, "error": "unable to connect to server"}))


def _aiosqlite_wait_line() -> int:
    import aiosqlite.core

    lines = Path(aiosqlite.core.__file__).read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if "= tx.get()" in text)


RAW = (
    "Thread._bootstrap (threading.py:1002);"
    f"_connection_worker_thread (aiosqlite/core.py:{_aiosqlite_wait_line()}) 40\n"
    "Thread._bootstrap (threading.py:1002);"
    f"_connection_worker_thread (aiosqlite/core.py:{_aiosqlite_wait_line()});"
    "Queue.get (queue.py:171);Condition.wait (threading.py:327) 7\n"
    "<module> (higgs/server/cli.py:301);Runner.run (asyncio/runners.py:118);"
    "create_route (higgs/server/api/routes.py:102);execute (sqlalchemy/orm/session.py:2300) 30\n"
    "<module> (higgs/server/cli.py:301);Runner.run (asyncio/runners.py:118) 10\n"
    " 5\n"
)


def test_parse_raw_profile_counts_busy_samples_only() -> None:
    prof = parse_raw(RAW)
    # The aiosqlite worker waiting in its queue (tx.get()) and empty stacks are idle.
    assert (prof.samples, prof.idle) == (40, 52)
    assert prof.by_package["SQLAlchemy"] == 30
    assert prof.by_package["asyncio / uvloop (C loop: I/O and waits)"] == 10
    assert prof.inclusive["create_route (higgs/server/api/routes.py)"] == 30
    assert prof.self_time.most_common(1)[0] == ("execute (sqlalchemy/orm/session.py)", 30)
