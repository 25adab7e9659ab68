"""``python -m bench.connect [--smoke] [--connects N] [--restarts N]``: time to connect and to
be served again after a node crash, per path (issue 13, item 5).

In one lab (the e2e benchmark's: node behind the home NAT, client behind its own), for each
path -- direct (port-forwarded node), UDP relay, WebSocket relay -- a fresh server and node,
then:

- **connect**: ``N`` times ``higgsvpn disconnect`` then ``higgsvpn connect --json``, timed
  around the command as a user runs it (interpreter start included), with the ``timings``
  object the command prints (docs/client.md): median and p90 of the wall time, the median of
  each phase;
- **node restart**: with the client connected and pinging the internet host through the
  tunnel every 100 ms (in batches of 5, see ``_pinging``), the node is SIGKILLed and started
  again on its state directory: the time from the restart command to the end of the last
  interruption of the echoes (the killed higgsnode's wireguard-go carries on until the
  restarted node replaces it). ``HIGGS_BENCH_KEEP=DIR`` keeps each restart's ``ping -D``
  output there.

The reference, measured in the same run and lab: a stock WireGuard client (wireguard-go,
``wg set``, wg-quick's policy routing) brought up to its first echo answered, against a
stock node; it has no server to ask and no kill switch, so it is the floor of what a
WireGuard connect costs on this machine, not a like-for-like row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.connect.figures import (
    by_phase_order,
    first_reply_after,
    last_outage,
    phase_medians,
    reply_times,
    summary,
)
from bench.e2e.product import NodeHandle, product_tunnel
from bench.harness import Budget, Report, Section, Table, exit_on_sigterm, progress
from higgs.lab import Lab, StockTunnel
from higgs.lab.netns import ns_argv

__all__ = ["main", "run"]

TARGET_CONNECT_S = 1.5
TARGET_SERVED_S = 5.0
SERVED_WAIT_S = 45.0  # a restart not served by then counts as "not within 45 s"


@dataclass(frozen=True)
class Path_:
    label: str
    tunnel: str  # bench.e2e.product's mode
    client_mode: str  # higgsvpn connect --mode
    expect: str  # the mode connect must answer


PATHS = (
    Path_("direct", "direct", "direct", "direct"),
    Path_("UDP relay", "udp_relay", "relay", "udp_relay"),
    Path_("WebSocket relay", "relay", "relay", "relay"),
)


@dataclass
class PathFigures:
    walls: list[float] = field(default_factory=list)  # seconds, around the command
    timings: list[dict[str, float]] = field(default_factory=list)  # ms, connect's own
    served: list[float | None] = field(default_factory=list)  # seconds; None = not in time
    outages: list[float] = field(default_factory=list)  # seconds without echoes
    problems: list[str] = field(default_factory=list)


def _ping_once(lab: Lab) -> bool:
    out = lab.client.run(["ping", "-n", "-c", "1", "-W", "1", lab.internet.ip], check=False)
    return out.returncode == 0


def _stock_connect(lab: Lab) -> float | None:
    """Seconds from the stock client's first command to its first echo answered."""
    tunnel = StockTunnel(lab)
    tunnel.start_node()
    try:
        t0 = time.monotonic()
        tunnel.start_client()
        for _ in range(50):  # bounded: 50 echoes of at most 1 s each
            if _ping_once(lab):
                return time.monotonic() - t0
        return None
    finally:
        tunnel.down()


@contextlib.contextmanager
def _pinging(lab: Lab, seconds: float) -> Iterator[list[str]]:
    """Echoes every 100 ms from the client through the tunnel, in batches of 5 (``ping -D``);
    yields their output lines as they come (a list a thread appends to). Batches, not one
    long ping: ping binds its source address when it starts, and a new route may give the
    tunnel another one (a batch lost to that costs at most one batch, about a second).
    Stopped (our own processes) on exit, and after ``seconds`` at the latest."""
    argv = ["ping", "-n", "-D", "-c", "5", "-i", "0.1", "-W", "1", lab.internet.ip]
    lines: list[str] = []
    stop = threading.Event()
    deadline = time.monotonic() + seconds

    def loop() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            proc = subprocess.run(
                ns_argv(lab.client.ns, argv), capture_output=True, text=True, timeout=20,
                check=False,
            )  # fmt: skip
            lines.extend(proc.stdout.splitlines(keepends=True))

    pinger = threading.Thread(target=loop, daemon=True)
    pinger.start()
    try:
        yield lines
    finally:
        stop.set()
        pinger.join(25)


def _until(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def _restart_once(lab: Lab, node: NodeHandle) -> tuple[float | None, float]:
    """SIGKILL the node, start it again. Returns (served, outage): seconds from the start
    command to the end of the last interruption of the echoes through the tunnel (0 when
    there was none; None when the echoes had not come back within :data:`SERVED_WAIT_S`),
    and how long that interruption lasted."""
    with _pinging(lab, SERVED_WAIT_S + 40) as lines:
        # The tunnel works before the crash (after a previous round it may still be coming
        # back: give it the same wait).
        t_before = time.time()
        if not _until(lambda: first_reply_after(list(lines), t_before) is not None, 30):
            raise RuntimeError("no echo through the tunnel before the node was killed")
        proc = node.program.proc
        assert proc is not None
        proc.popen.kill()
        proc.popen.wait(10)
        t_restart = time.time()
        node.restart()

        def answering() -> bool:
            times = reply_times(list(lines)[-40:])
            return bool(times) and time.time() - max(times) < 2.0

        def settled() -> bool:
            """Served again and steady for 3 s, or 20 s without any interruption."""
            now = time.time() - t_restart
            gap = last_outage(list(lines), t_restart)
            if gap is None:
                return now > 20 and answering()
            return now - gap[1] > 3 and answering()

        _until(settled, SERVED_WAIT_S)
        keep = os.environ.get("HIGGS_BENCH_KEEP")
        if keep:  # the echoes of each restart, to look at (the lab's own files go with it)
            out = Path(keep) / f"restart-{int(t_restart)}.txt"
            out.write_text(f"restart at {t_restart:.6f}\n" + "".join(lines))
            restarted = node.program.proc
            if restarted is not None:  # where the restarted node's start-up spent its time
                out.with_suffix(".node.log").write_text(restarted.log_text())
        gap = last_outage(list(lines), t_restart)
        answered = answering()
        if gap is None:
            return (0.0 if answered else None), 0.0
        return (gap[1] if answered else None), gap[1] - gap[0]


def _measure_path(
    lab: Lab, path: Path_, connects: int, restarts: int, budget: Budget
) -> PathFigures:
    fig = PathFigures()
    nodes: list[NodeHandle] = []
    for router in ("home_router", "client_router"):
        lab.host(router).run(["conntrack", "-F"], check=False)
    with product_tunnel(lab, path.tunnel, node_out=nodes) as vpn:
        for i in range(connects):
            if budget.expired():
                fig.problems.append(f"time budget spent after {i} connects")
                break
            vpn("disconnect", check=False)
            t0 = time.monotonic()
            answer = json.loads(vpn("connect", "--json", "--mode", path.client_mode))
            wall = time.monotonic() - t0
            if answer.get("mode") != path.expect:
                fig.problems.append(f"connect {i} took {answer.get('mode')}, left out")
                continue
            if not _ping_once(lab):
                fig.problems.append(f"connect {i}: no echo through the tunnel afterwards")
            fig.walls.append(wall)
            fig.timings.append(dict(answer.get("timings") or {}))
            progress(f"connect: {path.label} #{i}: {wall:.2f} s")
        for r in range(restarts):
            if budget.expired():
                fig.problems.append(f"time budget spent after {r} node restarts")
                break
            served, outage = _restart_once(lab, nodes[0])
            fig.served.append(served)
            fig.outages.append(outage)
            took = "not served" if served is None else f"{served:.2f} s"
            progress(f"connect: {path.label} node restart #{r}: {took} (outage {outage:.2f} s)")
    return fig


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def tables(stock: list[float], figures: dict[str, PathFigures]) -> list[Table]:
    connect = Table(
        [
            "path",
            "connects",
            "wall median s",
            "wall p90 s",
            "connect's total median s",
            "target",
            "verdict",
        ],
        "Time to connect: `higgsvpn connect --json` as a user runs it, until it returns with "
        "the tunnel up and a first echo through it",
    )
    if stock:
        med, p90 = summary(stock)
        connect.add(["stock wireguard-go (reference)", str(len(stock)), _s(med), _s(p90), "–",
                     "reference", ""])  # fmt: skip
    for label, fig in figures.items():
        if not fig.walls:
            connect.add([label, "0", "–", "–", "–", f"≤ {TARGET_CONNECT_S} s", ""])
            continue
        med, p90 = summary(fig.walls)
        inner = summary([t.get("total", 0.0) / 1000 for t in fig.timings])[0]
        verdict = "met" if med <= TARGET_CONNECT_S else "**missed**"
        connect.add([label, str(len(fig.walls)), _s(med), _s(p90), _s(inner),
                     f"≤ {TARGET_CONNECT_S} s", verdict])  # fmt: skip
    medians = {label: phase_medians(f.timings) for label, f in figures.items() if f.timings}
    names = by_phase_order(n for m in medians.values() for n in m)
    phases = Table(
        ["phase (median ms)", *medians],
        "Where a connect's time goes: median of each phase of the `timings` object "
        "(docs/client.md); a phase missing on some connects counts 0 there",
    )
    for name in names:
        phases.add([name, *(f"{m[name]:.0f}" if name in m else "–" for m in medians.values())])
    restart = Table(
        [
            "path",
            "restarts",
            "served again median s",
            "max s",
            "outage median s",
            "target",
            "verdict",
        ],
        "Node SIGKILLed and started again: from the restart command to the end of the last "
        "interruption of the echoes (one every 100 ms through the tunnel; the killed node's "
        "wireguard-go carries on until the restarted node replaces it)",
    )
    for label, fig in figures.items():
        got = [s for s in fig.served if s is not None]
        missing = len(fig.served) - len(got)
        if not fig.served:
            restart.add([label, "0", "–", "–", "–", f"≤ {TARGET_SERVED_S:g} s", ""])
            continue
        mid: float | None = summary(got)[0] if got else None
        worst = f"not within {SERVED_WAIT_S:g} s" if missing else _s(max(got))
        ok = not missing and mid is not None and mid <= TARGET_SERVED_S
        out_med = summary(fig.outages)[0] if fig.outages else None
        restart.add([label, str(len(fig.served)), _s(mid), worst, _s(out_med),
                     f"≤ {TARGET_SERVED_S:g} s",
                     "met" if ok else "**missed**"])  # fmt: skip
    return [connect, phases, restart]


def run(
    *, smoke: bool = False, connects: int | None = None, restarts: int | None = None
) -> Section:
    n = connects or (1 if smoke else 10)
    k = restarts if restarts is not None else (1 if smoke else 3)
    budget = Budget(seconds=300 if smoke else 1500)
    load_at_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    lab = Lab(prefix="hb").build()
    figures: dict[str, PathFigures] = {}
    stock: list[float] = []
    try:
        for i in range(n):
            took = _stock_connect(lab)
            if took is not None:
                stock.append(took)
            progress(f"connect: stock #{i}: {_s(took)} s")
        for path in PATHS:
            try:
                figures[path.label] = _measure_path(lab, path, n, k, budget)
            except Exception as exc:  # one path's failure must not hide the others' figures
                fig = figures.setdefault(path.label, PathFigures())
                fig.problems.append(f"failed: {type(exc).__name__}: {exc}")
                progress(f"connect: {path.label} failed: {exc}")
    finally:
        lab.teardown()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    notes = [f"{label}: {p}" for label, f in figures.items() for p in f.problems]
    return Section(
        "Time to connect and node restart (issue 13, item 5)",
        text=(
            f"{n} connect(s) and {k} node restart(s) per path, one lab, paths one after "
            f"another. Load average at start {load_at_start}, at end {load} (2 vCPUs)."
        ),
        tables=tables(stock, figures),
        notes=notes,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.connect", description=__doc__)
    p.add_argument(
        "--smoke", action="store_true", help="1 connect, 1 restart per path (a few minutes)"
    )
    p.add_argument("--connects", type=int, help="connects per path (default 10)")
    p.add_argument("--restarts", type=int, help="node restarts per path (default 3)")
    args = p.parse_args(argv)
    exit_on_sigterm()
    report = Report("Higgs.net time to connect", smoke=args.smoke)
    report.add(run(smoke=args.smoke, connects=args.connects, restarts=args.restarts))
    print(report.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
