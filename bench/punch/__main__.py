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
round, then median [min–max] of each figure and of the per-round ratio punched / relay.
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
from pathlib import Path

from bench.e2e.product import product_tunnel
from bench.harness import progress
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.punch")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    rows: list[tuple[float, float, float]] = []
    missed = 0
    load_at_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    lab = Lab(prefix="hb").build()
    try:
        # A home router's firewall on both (new UDP from the WAN to the router dropped), as
        # in tests/e2e/test_hole_punch.py: without it an early probe can cost the punch.
        lab.set_nat("home_router", "cone")
        lab.set_nat("client_router", "cone")
        with product_tunnel(lab, "udp_relay", client_mode="auto") as vpn:
            assert lab.workdir is not None
            # The UDP relay's handshake needs the node's and the client's initiations to meet
            # at the relay (retried every 5 s): on a loaded machine 12 s are sometimes short.
            with (lab.workdir / "product" / "higgsvpn.toml").open("a") as fh:
                fh.write("udp_relay_timeout_s = 25\n")
            for n in range(args.rounds):
                vpn("disconnect", check=False)
                t0 = time.time()
                answer = json.loads(vpn("connect", "--json"))
                if answer.get("mode") != "udp_relay":
                    progress(f"round {n}: connected on {answer.get('mode')}, skipped")
                    continue
                out: dict[str, str] = {}

                def ping(out: dict[str, str] = out) -> None:
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
                    missed += 1
                    progress(f"round {n}: not punched within 30 s ({status.get('path_why')})")
                    continue
                connected_at = float(str(status["connected_at"]))
                since = float(str(status["path_since"]))
                assert t0 <= connected_at <= since <= time.time(), status
                relay_s, punched_s = connected_at - t0, since - connected_at
                gap = _gap_s(out.get("ping", ""), PINGS)
                progress(
                    f"round {n}: relay {relay_s:.2f} s, punched +{punched_s:.2f} s, gap {gap:.2f} s"
                )
                rows.append((relay_s, punched_s, gap))
    finally:
        lab.teardown()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"bench/punch: {len(rows)} rounds punched, {missed} not; load average at start "
          f"{load_at_start}, at end {load}\n")  # fmt: skip
    print("| round | relay up (s) | punched after (s) | ratio punched/relay | upgrade gap (s) |")
    print("|---|---|---|---|---|")
    for n, (relay_s, punched_s, gap) in enumerate(rows):
        print(f"| {n} | {relay_s:.2f} | {punched_s:.2f} | {punched_s / relay_s:.2f} | {gap:.2f} |")
    if rows:
        print(f"| median [min–max] | {_spread([r for r, _, _ in rows])} "
              f"| {_spread([p for _, p, _ in rows])} | {_spread([p / r for r, p, _ in rows])} "
              f"| {_spread([g for *_, g in rows])} |")  # fmt: skip
    return 0 if rows and not missed else 1


if __name__ == "__main__":
    sys.exit(main())
