"""``python -m bench.punch [--rounds N]``: how long each path takes to come up (issue 12).

In one lab (node behind a cone home NAT with a home router's firewall, no port forward, no
miniupnpd; client behind a cone NAT), per round, a fresh session:

- **relay bring-up** (the reference, measured in the same round): from ``higgsvpn connect``
  being run until its WireGuard handshake went through the UDP relay (the daemon's
  ``connected_at``);
- **punched**: from there until the peer moved onto the hole-punched path (``path_since``);
- **upgrade gap**: the longest run of unanswered pings (one every 50 ms through the tunnel)
  while the session moves from the relay to the punched path.

The times are the client daemon's own stamps (unix clock, the same host's), bounded by this
process's clock; a ``status`` poll only finds out that the switch happened (its CLI start-up
takes seconds on a busy machine and would otherwise be counted). Printed: a Markdown table per
round, then median [min–max] of each figure and of the per-round ratio punched / relay. Also
the ``punch`` part of ``python -m bench`` (one round in ``--smoke``).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.e2e.product import product_tunnel
from bench.harness import Section, Table, progress
from higgs.lab import Lab
from higgs.lab.netns import ns_argv

PING_EVERY_S = 0.05
PINGS = 240  # 12 s of pings: covers the poll, the lead and the probe window


def _gap_s(ping_output: str, sent: int) -> float:
    """The longest run of unanswered pings, in seconds."""
    seen = {int(m.group(1)) for m in re.finditer(r"icmp_seq=(\d+)", ping_output)}
    longest = run = 0
    for seq in range(1, sent + 1):
        run = 0 if seq in seen else run + 1
        longest = max(longest, run)
    return longest * PING_EVERY_S


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} [{min(values):.2f}–{max(values):.2f}]"


def _round(lab: Lab, vpn: Callable[..., str], n: int) -> tuple[float, float, float] | str:
    """One fresh session: (relay up, punched after, upgrade gap), or why the round missed."""
    vpn("disconnect", check=False)
    t0 = time.time()
    answer = json.loads(vpn("connect", "--json"))
    if answer.get("mode") != "udp_relay":
        return f"connected on {answer.get('mode')}"
    out: dict[str, str] = {}

    def ping() -> None:
        argv = ["ping", "-n", "-i", str(PING_EVERY_S), "-c", str(PINGS), "-W", "1",
                lab.internet.ip]  # fmt: skip
        proc = subprocess.run(
            ns_argv(lab.client.ns, argv), capture_output=True, text=True, timeout=60
        )
        out["ping"] = proc.stdout

    pinger = threading.Thread(target=ping)
    pinger.start()
    status: dict[str, object] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = json.loads(vpn("status", "--json"))
        if status.get("mode") == "punched":
            break
        time.sleep(0.2)
    pinger.join()
    if status.get("mode") != "punched":
        return f"not punched within 30 s ({status.get('path_why')})"
    connected_at = float(str(status["connected_at"]))
    since = float(str(status["path_since"]))
    assert t0 <= connected_at <= since <= time.time(), status
    relay_s, punched_s = connected_at - t0, since - connected_at
    gap = _gap_s(out.get("ping", ""), PINGS)
    progress(f"punch round {n}: relay {relay_s:.2f} s, punched +{punched_s:.2f} s, gap {gap:.2f} s")
    return relay_s, punched_s, gap


def run(*, smoke: bool = False, rounds: int | None = None) -> Section:
    """The part of ``python -m bench``: ``rounds`` fresh sessions (default 5, smoke 1)."""
    rounds = rounds or (1 if smoke else 5)
    rows: list[tuple[float, float, float]] = []
    notes: list[str] = []
    load_at_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    lab = Lab(prefix="hb").build()
    try:
        # A home router's firewall on both (new UDP from the WAN to the router dropped), as
        # in tests/e2e/test_hole_punch.py: without it an early probe can cost the punch.
        lab.set_nat("home_router", "cone")
        lab.set_nat("client_router", "cone")
        # The UDP relay's handshake needs the node's and the client's initiations to meet at
        # the relay (retried every 5 s): on a loaded machine 12 s are sometimes short.
        settings = "udp_relay_timeout_s = 25\n"
        with product_tunnel(lab, "udp_relay", client_mode="auto", client_settings=settings) as vpn:
            for n in range(rounds):
                got = _round(lab, vpn, n)
                if isinstance(got, str):
                    progress(f"punch round {n}: {got}")
                    notes.append(f"round {n} missed: {got}")
                else:
                    rows.append(got)
    finally:
        lab.teardown()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    table = Table(
        ["round", "relay up (s)", "punched after (s)", "ratio punched/relay", "upgrade gap (s)"]
    )
    for n, (relay_s, punched_s, gap) in enumerate(rows):
        table.add([str(n), f"{relay_s:.2f}", f"{punched_s:.2f}", f"{punched_s / relay_s:.2f}",
                   f"{gap:.2f}"])  # fmt: skip
    if rows:
        table.add(["median [min–max]", _spread([r for r, _, _ in rows]),
                   _spread([p for _, p, _ in rows]), _spread([p / r for r, p, _ in rows]),
                   _spread([g for *_, g in rows])])  # fmt: skip
    notes.append(
        f"{len(rows)} of {rounds} round(s) punched; load average at start {load_at_start}, "
        f"at end {load}. Relay up: `higgsvpn connect --mode auto` until its handshake went "
        "through the UDP relay (the reference, same round); punched after: from there until "
        "the peer moved onto the hole-punched path; upgrade gap: the longest run of "
        f"unanswered pings (one every {PING_EVERY_S * 1000:.0f} ms) across the switch."
    )
    return Section("Path bring-up and upgrade (bench/punch, issue 12)", tables=[table], notes=notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.punch", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    section = run(rounds=args.rounds)
    print(section.render())
    return 0 if section.tables[0].rows and len(section.notes) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
