"""``python -m bench.punch [--rounds N]``: how long each path takes to come up (issue 12).

In one lab (node behind a cone home NAT, no port forward; client behind a cone NAT), per
round: ``higgsvpn connect`` (the time until its WireGuard handshake went through the UDP
relay: the reference, measured in the same run), then the time from there until ``status``
says ``punched``; meanwhile a ping every 50 ms through the tunnel measures the longest gap
the relay → punched switch leaves in traffic. Printed as a Markdown table with the ratio
punched bring-up / relay bring-up per round and its median.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.punch")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rows: list[tuple[float, float, float]] = []
    lab = Lab(prefix="hb").build()
    try:
        with product_tunnel(lab, "udp_relay", client_mode="auto") as vpn:
            assert lab.workdir is not None
            # The UDP relay's handshake needs the node's and the client's initiations to meet
            # at the relay (retried every 5 s): on a loaded machine 12 s are sometimes short.
            with (lab.workdir / "product" / "higgsvpn.toml").open("a") as fh:
                fh.write("udp_relay_timeout_s = 25\n")
            for n in range(args.rounds):
                vpn("disconnect", check=False)
                t0 = time.monotonic()
                answer = json.loads(vpn("connect", "--json"))
                relay_s = time.monotonic() - t0
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
                t1 = time.monotonic()
                punched_s = float("nan")
                while time.monotonic() - t1 < 30:
                    if json.loads(vpn("status", "--json")).get("mode") == "punched":
                        punched_s = time.monotonic() - t1
                        break
                    time.sleep(0.2)
                pinger.join()
                gap = _gap_s(out.get("ping", ""), PINGS)
                progress(
                    f"round {n}: relay {relay_s:.2f} s, punched +{punched_s:.2f} s, gap {gap:.2f} s"
                )
                rows.append((relay_s, punched_s, gap))
    finally:
        lab.teardown()
    print(
        "| round | UDP relay up (s) | punched after (s) | ratio punched/relay | longest gap (s) |"
    )
    print("|---|---|---|---|---|")
    for n, (relay_s, punched_s, gap) in enumerate(rows):
        print(f"| {n} | {relay_s:.2f} | {punched_s:.2f} | {punched_s / relay_s:.2f} | {gap:.2f} |")
    ratios = [p / r for r, p, _ in rows if p == p]
    if ratios:
        print(f"\nmedian ratio punched/relay bring-up: {statistics.median(ratios):.2f} "
              f"(rounds {len(rows)}; gap max {max(g for *_, g in rows):.2f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
