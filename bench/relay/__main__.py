"""Relay benchmark: ``python -m bench.relay [--smoke] [--rounds N] [--duration S]``.

Measures the Higgs hub (bench/relay/server.py) and a reference relay on Node's ``ws``
(bench/relay/node_ref/relay.js, same protocol and checks) with the same load generator
(bench/relay/loadgen.py) in the same run, and prints Markdown tables with ratios:

- throughput, client → node, one datagram per frame (the relay's worst case: no sender
  batching), 1420 B and 100 B datagrams, 1 / 10 / 100 sessions (10 sessions per node link);
- added latency at a moderate paced rate (5,000 datagrams/s of 1420 B over 10 sessions);
- memory for 10,000 idle sessions (100 node links), with the connect time.

The server runs on CPU 1 and the generator on CPU 0 (when there are two); each measurement
gets a fresh server process; the workloads of a round alternate between the two relays and the
medians over rounds are printed. Everything is bounded: each run has a timeout, servers are
stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NODE_REF = HERE / "node_ref"
PER_NODE = 10
IDLE_PER_NODE = 100


def _pin(cpu: int) -> Callable[[], None] | None:
    if (os.cpu_count() or 1) < 2:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def ensure_reference(install: bool) -> str | None:
    """Returns why the Node reference cannot run, or None when it can."""
    node = shutil.which("node")
    if node is None:
        return "node is not installed"
    if (NODE_REF / "node_modules" / "ws").is_dir():
        return None
    if not install:
        return "node_modules missing (run `npm ci` in bench/relay/node_ref)"
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not installed"
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=NODE_REF,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if result.returncode != 0:
        return f"npm ci failed: {result.stderr.strip()[-200:]}"
    return None


class Server:
    """One relay server process, pinned, stopped by PID."""

    def __init__(self, relay: str, sessions: int, per_node: int) -> None:
        if relay == "higgs":
            argv = [sys.executable, "-m", "bench.relay.server", "0", str(sessions), str(per_node)]
        else:
            argv = ["node", str(NODE_REF / "relay.js"), "0", str(sessions), str(per_node)]
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=_pin(1),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "READY <port>"; the process exits on failure
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"{relay} relay did not start")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def measure(relay: str, mode: str, sessions: int, per_node: int, **opts: Any) -> dict[str, Any]:
    server = Server(relay, sessions, per_node)
    try:
        argv = [
            sys.executable,
            "-m",
            "bench.relay.loadgen",
            mode,
            str(server.port),
            str(server.proc.pid),
            "--sessions",
            str(sessions),
            "--per-node",
            str(per_node),
        ]
        for key, value in opts.items():
            argv += [f"--{key}", str(value)]
        result = subprocess.run(
            argv,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
            preexec_fn=_pin(0),
            check=False,
        )
        lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
        if result.returncode != 0 or not lines:
            return {"error": (result.stderr.strip() or "no output")[-300:]}
        out: dict[str, Any] = json.loads(lines[-1])
        return out
    finally:
        server.stop()


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else None


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}x"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few seconds, tiny loads")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=4.0, help="measuring window, seconds")
    p.add_argument("--idle-sessions", type=int, default=10_000)
    p.add_argument("--no-reference", action="store_true")
    a = p.parse_args(argv)

    if a.smoke:
        sizes, counts, rounds = [100], [2], 1
        duration, warmup, rate, latency_s = 0.3, 0.1, 1000, 0.5
        idle_sessions = 50
    else:
        sizes, counts, rounds = [1420, 100], [1, 10, 100], a.rounds
        duration, warmup, rate, latency_s = a.duration, 1.0, 5000, 4.0
        idle_sessions = a.idle_sessions

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    idle_nodes = -(-idle_sessions // IDLE_PER_NODE)
    idle_fit = idle_sessions
    if idle_sessions + idle_nodes + 100 > hard:
        idle_fit = (hard - 100) * IDLE_PER_NODE // (IDLE_PER_NODE + 1)

    why_not = "disabled" if a.no_reference else ensure_reference(install=not a.smoke)
    relays = ["higgs"] + (["node-ws"] if why_not is None else [])
    load_before = os.getloadavg()
    started = time.monotonic()

    tput: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for _ in range(rounds):
        for size in sizes:
            for n in counts:
                for relay in relays if _ % 2 == 0 else relays[::-1]:
                    r = measure(
                        relay, "tput", n, PER_NODE, size=size, warmup=warmup, duration=duration
                    )
                    tput.setdefault((relay, size, n), []).append(r)
    latency = {
        relay: measure(relay, "latency", 10, PER_NODE, size=1420, rate=rate, duration=latency_s)
        for relay in relays
    }
    idle = {relay: measure(relay, "idle", idle_fit, IDLE_PER_NODE) for relay in relays}
    load_after = os.getloadavg()

    print("## Relay benchmark: Higgs hub (picows + uvloop) vs Node `ws` reference\n")
    print(
        f"{os.cpu_count()} CPUs; server pinned to CPU 1, load generator to CPU 0; "
        f"{rounds} round(s), medians; {duration:g} s windows after {warmup:g} s warm-up; "
        f"load average before/after: {load_before[0]:.1f} / {load_after[0]:.1f} "
        f"(other processes share these CPUs); total {time.monotonic() - started:.0f} s."
    )
    if why_not is not None:
        print(f"\nReference relay not measured: {why_not}.")
    print("\n### Throughput (client → node, one datagram per frame)\n")
    print(
        "| datagram | sessions | higgs datagrams/s | higgs Mbit/s | node-ws datagrams/s "
        "| node-ws Mbit/s | ratio | higgs CPU µs/datagram | node-ws CPU µs/datagram "
        "| CPU-cost ratio | higgs one-core ceiling datagrams/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        for n in counts:
            h = tput.get(("higgs", size, n), [])
            ref = tput.get(("node-ws", size, n), [])
            hd, rd = _median(h, "datagrams_per_s"), _median(ref, "datagrams_per_s")
            hu, ru = _median(h, "server_us_per_datagram"), _median(ref, "server_us_per_datagram")
            print(
                f"| {size} B | {n} | {_fmt(hd)} | {_fmt(_median(h, 'mbit_per_s'))} "
                f"| {_fmt(rd)} | {_fmt(_median(ref, 'mbit_per_s'))} | {_ratio(hd, rd)} "
                f"| {_fmt(hu, 2)} | {_fmt(ru, 2)} | {_ratio(ru, hu)} "
                f"| {_fmt(1e6 / hu if hu else None)} |"
            )
    print(
        "\nCPU µs/datagram = server process CPU time (user + system) / datagrams delivered in "
        "the window; it does not depend on how much of the core the server got. The one-core "
        "ceiling is 1e6 / that figure: an extrapolation, valid only if the cost per datagram "
        "stayed the same at full load (with the hub's write coalescing it falls as load rises)."
    )
    errors: list[tuple[object, Any]] = [
        (k, x["error"]) for k, runs in tput.items() for x in runs if "error" in x
    ]
    print("\n### Added latency (paced, 1420 B, 10 sessions)\n")
    print("| relay | rate /s | delivered | p50 µs | p99 µs | server CPU % |")
    print("|---|---|---|---|---|---|")
    for relay, x in latency.items():
        print(
            f"| {relay} | {_fmt(x.get('rate'))} | {_fmt(x.get('delivered'))} "
            f"| {_fmt(x.get('p50_us'))} | {_fmt(x.get('p99_us'))} "
            f"| {_fmt(x.get('server_cpu_pct'), 1)} |"
        )
        if "error" in x:
            errors.append((relay, x["error"]))
    print(f"\n### Idle sessions ({IDLE_PER_NODE} sessions per node link)\n")
    print(
        "| relay | sessions | node links | connect s | probes delivered | RSS base MiB "
        "| RSS MiB | KiB/session | RSS at 10,000 sessions MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for relay, x in idle.items():
        per = x.get("kib_per_session")
        at_10k = None
        if per is not None and "rss_base_mib" in x:
            at_10k = x["rss_base_mib"] + per * 10_000 / 1024
        print(
            f"| {relay} | {_fmt(x.get('sessions'))} | {_fmt(x.get('node_links'))} "
            f"| {_fmt(x.get('connect_s'), 2)} | {_fmt(x.get('probes_ok'))} "
            f"| {_fmt(x.get('rss_base_mib'), 1)} | {_fmt(x.get('rss_mib'), 1)} "
            f"| {_fmt(per, 1)} | {_fmt(at_10k, 0)} |"
        )
        if "error" in x:
            errors.append((relay, x["error"]))
    if idle_fit != idle_sessions:
        print(
            f"\n{idle_sessions} sessions do not fit the fd limit ({hard}); measured "
            f"{idle_fit} and extrapolated linearly to 10,000."
        )
    if errors:
        print("\nErrors:")
        for key, message in errors:
            print(f"- {key}: {message}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
