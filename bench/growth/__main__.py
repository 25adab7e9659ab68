"""``python -m bench.growth [--smoke] [--clients 1,10,50] [--seconds N]``: 1, 10 and 50
clients at once through one node, direct and through the server's UDP relay (issue 13 item
4): aggregate throughput, fairness between clients (Jain's index), CPU seconds per GB on each
side, and how each grows with N."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from bench.harness import Report, Section, exit_on_sigterm, progress
from higgs.lab.stock import StockClient

from .plan import MAX_CLIENTS
from .stats import Point, growth_table
from .system import (
    DIRECT,
    UDP_RELAY,
    Measured,
    PathSpec,
    add_clients,
    growth_lab,
    measure,
    serving,
)

__all__ = ["main", "run"]

SMOKE_CLIENTS = (1, 2)
FULL_CLIENTS = (1, 10, 50)
# Per path: a lab build, the product's start, N bring-ups and the downloads; past this the
# remaining counts are left out (and said so), so a stuck machine cannot hold the run.
PATH_BUDGET_S = 900.0


def _path(path: PathSpec, counts: Sequence[int], seconds: int) -> tuple[list[Measured], str]:
    done: list[Measured] = []
    started = time.monotonic()
    progress(f"growth: {path.name}: lab with {max(counts)} client hosts")
    with growth_lab(max(counts)) as lab, serving(lab, path) as product:
        clients: list[StockClient] = []
        for n in sorted(counts):
            if time.monotonic() - started > PATH_BUDGET_S:
                return done, f"N = {n} and above left out: the path's {PATH_BUDGET_S:g} s ran out"
            t0 = time.monotonic()
            add_clients(product, clients, n, path)
            progress(f"growth: {n} clients up in {time.monotonic() - t0:.0f} s")
            done.append(measure(product, clients[:n], seconds, relayed=not path.direct))
    return done, ""


def run(
    *,
    smoke: bool = False,
    rounds: int | None = None,
    clients: Sequence[int] | None = None,
    seconds: int | None = None,
) -> Section:
    counts = tuple(clients or (SMOKE_CLIENTS if smoke else FULL_CLIENTS))
    secs = seconds or (1 if smoke else 5)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    tables, notes = [], []
    for path in (DIRECT, UDP_RELAY):
        try:
            measured, cut = _path(path, counts, secs)
        except Exception as exc:  # one path's failure must not hide the other's table
            progress(f"growth: {path.name} failed: {exc}")
            notes.append(f"**{path.name}** failed: {type(exc).__name__}: {str(exc)[:500]}")
            continue
        points: list[Point] = [m.point for m in measured]
        tables.append(growth_table(path.name, points))
        spreads = ", ".join(f"N={m.point.n}: {m.finish_spread_s:.2f} s" for m in measured)
        notes.append(
            f"{path.name}: the downloads, released at one instant, finished within {spreads} "
            f"of each other (each runs {secs} s once its connections are up, so this is how "
            "late the last got going: connection set-up through the loaded tunnel)"
        )
        if not path.direct:
            notes.append(f"{path.name}: datagrams the relay forwarded, " + _relayed(measured))
        if cut:
            notes.append(f"{path.name}: {cut}")
    load_end = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return Section(
        "Growth (bench/growth, issue 13 item 4)",
        text=(
            f"N = {', '.join(map(str, counts))} clients at once through one node; each client "
            "is a **stock wireguard-go peer** (wg-quick style full tunnel) configured from the "
            "server's `POST /v1/routes` answer for one account, not a higgsvpn daemon each. "
            f"Every client runs an iperf3 TCP **download** (`-R`, {secs} s) from its own "
            "iperf3 server port on the internet host, all released at the same instant. "
            "Aggregate = sum of the clients' received rates; Jain's index = (Σx)² / (n·Σx²) "
            "over them (1 = equal shares). CPU s/GB: CPU seconds of the processes of the N "
            "client namespaces (together), the node's and the server's namespaces (measuring "
            "tools excluded; kernel work in softirq is charged to no process) per GB received. "
            f"Ratios are to the smallest N. Load average (1/5/15 min) at start {load}, at end "
            f"{load_end} on {os.cpu_count()} vCPUs."
        ),
        tables=tables,
        notes=notes,
    )


def _relayed(measured: Sequence[Measured]) -> str:
    """Kernel vs userspace datagrams per N: the rows are the kernel path only if userspace
    carried (almost) nothing."""
    parts = []
    for m in measured:
        by = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(m.relayed.items())) or "none counted"
        flows = ", ".join(f"{k} {v:g}" for k, v in sorted(m.flows.items())) or "–"
        parts.append(f"N={m.point.n}: {by} (sessions forwarded at the end: {flows})")
    return "; ".join(parts)


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not counts or not all(1 <= n <= MAX_CLIENTS for n in counts):
        raise argparse.ArgumentTypeError(f"client counts must be 1..{MAX_CLIENTS}: {text!r}")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.growth", description=__doc__)
    p.add_argument("--smoke", action="store_true", help=f"N in {SMOKE_CLIENTS}, 1 s each")
    p.add_argument("--clients", type=_counts, help="comma-separated N (default 1,10,50)")
    p.add_argument("--seconds", type=int, help="iperf3 seconds per N (default 5, smoke 1)")
    args = p.parse_args(argv)
    if args.seconds is not None and not 1 <= args.seconds <= 600:
        p.error("--seconds must be 1..600")
    exit_on_sigterm()
    report = Report("Higgs.net growth benchmark", smoke=args.smoke)
    report.add(run(smoke=args.smoke, clients=args.clients, seconds=args.seconds))
    print(report.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
