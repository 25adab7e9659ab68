"""A storm of garbage and spoofed datagrams against the UDP relay while a real session works.

Two wireguard-go peers talk through the relay (the namespaces of ``test_udp_relay.py``); an
attacker namespace sends ``HIGGS_UDP_STORM`` datagrams (``make test``: 20,000; ``make soak``:
1,000,000) to the session's relay port, in rounds small enough for the relay's socket buffer.
After each round the relay's ``higgs_udp_relay_dropped_total{reason}`` must have risen by
exactly what the round sent of each reason, and the kernel must have dropped none of them
(UDP ``RcvbufErrors``): every datagram reached the relay and was counted. Every few rounds a
ping crosses the session; at the end the relay has not crashed, has not rebound a leg, and its
RSS grew less than :data:`RSS_GROWTH_LIMIT_KB`.

What is sent, by the reason the relay must give (docs/protocol.md §5):

- ``malformed``: empty datagrams, unknown types, reserved bytes set, handshakes of the wrong
  size, oversized garbage (up to 8000 bytes, fragmented);
- ``bad_mac1``: initiations and responses of the right size with a mac1 for nobody;
- ``unbound_source``: replays of the session's real data (live receiver indices) and made-up
  data, from ten attacker addresses;
- ``unconfirmed``: responses with a valid mac1 (the attacker knows the public keys) naming no
  pending initiation, and cookie replies naming none.

Initiations with a valid mac1 are left to ``test_udp_relay.py`` (they are forwarded or
rate-limited depending on timing, so they have no exact count).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from higgs.lab.netns import netns_socket

from . import scripts, test_udp_relay
from .test_udp_relay import ATTACKERS, PORT, RELAY_IP, Lab, capture_data, ping_ok, pub, wait_for

STORM = int(os.environ.get("HIGGS_UDP_STORM", "20000"))
ROUND = 1000  # datagrams per round: well inside the relay socket's 4 MiB buffer
PING_EVERY = 5  # rounds between two pings across the session
TIME_LIMIT_S = max(120.0, STORM / 1000)  # 1,000/s: a loaded 2-core machine manages 4,000

pytestmark = [pytest.mark.root, pytest.mark.timeout(TIME_LIMIT_S + 120)]
RSS_GROWTH_LIMIT_KB = 32 * 1024  # generous: the relay keeps nothing per hostile datagram
REASONS = ("malformed", "bad_mac1", "unbound_source", "unconfirmed")

lab = test_udp_relay.lab  # the namespaces, the peers and the relay's files (a fixture)


def relay_drops(lab: Lab) -> Counter[str]:
    """``higgs_udp_relay_dropped_total`` by reason, scraped over a socket in the relay's
    namespace (a curl per poll would take the CPU the relay needs)."""
    with netns_socket(lab.relay, socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(("127.0.0.1", 9419))
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: relay\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    out: Counter[str] = Counter()
    for line in b"".join(chunks).decode().splitlines():
        if line.startswith("higgs_udp_relay_dropped_total{"):
            name, _, value = line.rpartition(" ")
            out[name.split('reason="', 1)[1].split('"', 1)[0]] = int(float(value))
    return out


def rcvbuf_errors(lab: Lab) -> int:
    """The relay namespace's UDP receive-buffer overflows (datagrams the relay never saw)."""
    text = subprocess.run(
        ["ip", "netns", "exec", lab.relay, "cat", "/proc/net/snmp"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = [line.split()[1:] for line in text.splitlines() if line.startswith("Udp:")]
    return int(dict(zip(rows[0], rows[1], strict=True))["RcvbufErrors"])


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# Garbage takes the same userspace path in both modes; `make test` runs the one where the
# session's own traffic shares that path too, `make soak` both.
@pytest.mark.parametrize("mode", ["userspace", "kernel"] if STORM > 20_000 else ["userspace"])
def test_garbage_and_spoofed_datagrams_are_dropped_and_counted(lab: Lab, mode: str) -> None:
    lab.start_relay(userspace=mode == "userspace")
    wait_for("a ping through the relay", lambda: ping_ok(lab.client))
    wait_for("the session bound", lambda: lab.status().get("binds") == 1)
    legs = lab.status()["legs"][str(PORT)]
    captured = capture_data(lab)
    assert lab.proc is not None
    pid = lab.proc.pid
    storm = subprocess.Popen(
        ["ip", "netns", "exec", lab.attacker, sys.executable, "-c", scripts.STORM, RELAY_IP,
         str(PORT), pub(lab.client_key).hex(), ",".join(ATTACKERS), *captured],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert storm.stdin is not None
    assert storm.stdout is not None
    start = time.monotonic()
    expected = relay_drops(lab)
    overflows = rcvbuf_errors(lab)
    rss_start: int | None = None
    sent_by_reason: Counter[str] = Counter()
    sent = rounds = 0
    try:
        while sent < STORM:
            assert time.monotonic() - start < TIME_LIMIT_S, f"storm too slow: {sent} sent"
            n = min(ROUND, STORM - sent)
            storm.stdin.write(f"{n}\n")
            storm.stdin.flush()
            this_round = Counter(json.loads(storm.stdout.readline()))
            expected.update(this_round)
            sent_by_reason.update(this_round)
            sent += n
            rounds += 1

            deadline = time.monotonic() + 30
            while not all((d := relay_drops(lab))[r] >= expected[r] for r in REASONS):
                assert time.monotonic() < deadline, f"round {rounds} not counted: {dict(d)}"
                time.sleep(0.01)
            assert lab.proc.poll() is None, "the relay crashed"
            if rounds % PING_EVERY == 0:
                assert ping_ok(lab.client), f"the session stopped working after {sent}"
            if rounds == 1:
                rss_start = rss_kb(pid)  # after the first round: buffers and caches warm
    finally:
        storm.stdin.close()
        storm.wait(timeout=30)
    took = time.monotonic() - start
    drops = relay_drops(lab)
    assert rcvbuf_errors(lab) == overflows, "the kernel dropped datagrams the relay never saw"
    for reason in REASONS:
        assert drops[reason] == expected[reason], (reason, drops[reason], expected[reason])
    assert sum(sent_by_reason.values()) == sent
    assert set(sent_by_reason) == set(REASONS)
    assert ping_ok(lab.client, 3)
    status = lab.status()
    assert status["legs"][str(PORT)] == legs  # nothing redirected
    assert status["rebinds"] == 0
    assert rss_start is not None
    growth = rss_kb(pid) - rss_start
    assert growth < RSS_GROWTH_LIMIT_KB, f"RSS grew {growth} KiB"
    print(f"{mode}: {sent} datagrams in {took:.1f}s; drops {dict(drops)}; RSS +{growth} KiB")
