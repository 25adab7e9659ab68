"""``python -m bench.e2e.ab --before SRC [--rounds N] [--seconds S]``: direct mode on another
checkout's code against this one's, beside the stock reference, in one run (issue 13 item 1).

Three labs are up at once: stock wireguard-go (``StockTunnel``), direct mode with the
programs of ``--before`` (a ``src/`` directory, e.g. ``git archive <commit> src | tar -x -C
/tmp/base``, given to the lab's programs through ``PYTHONPATH``, which they inherit), and
direct mode with this checkout's. In every round each lab runs iperf3 for ``--seconds`` each
way, client -> internet host, in a rotated order; the CPU of every process of the client and
node namespaces (bench.e2e.measure's sampling, measuring tools excluded) is counted per GB,
and the daemons' own (Python) processes separately. Printed: medians over rounds and the
medians of same-round ratios to the stock lab, with their range.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.harness import exit_on_sigterm, progress
from higgs.lab import Lab
from higgs.lab.stock import StockTunnel

from .measure import E2eSizes, _iperf, pids_by_group, sample
from .product import product_tunnel

__all__ = ["main"]

HOSTS = ("client", "node")
VARIANTS = ("stock", "before", "after")
METRICS = ("up", "down", "cpu_client", "cpu_node", "py_client", "py_node")
BUDGET_S = 1800.0
HERE = Path(__file__).resolve().parents[2]


def _python(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().startswith("python")
    except OSError:
        return False


def measure(lab: Lab, sizes: E2eSizes) -> dict[str, float]:
    """Mbit/s each way and CPU s/GB of the client's and node's processes (and of their
    Python processes alone), both directions together."""
    pids = pids_by_group(lab, {h: h for h in HOSTS})
    groups = {**pids, **{f"py_{h}": [p for p in pids[h] if _python(p)] for h in HOSTS}}
    cpu = dict.fromkeys(groups, 0.0)
    out: dict[str, float] = {}
    gigabytes = 0.0
    for metric, extra in (("up", ()), ("down", ("-R",))):
        before = sample(groups)
        bps, nbytes, _ = _iperf(lab.client, lab.internet.ip, sizes, *extra)
        after = sample(groups)
        out[metric] = bps / 1e6
        gigabytes += nbytes / 1e9
        for g in groups:
            cpu[g] += after[g].cpu_since(before[g])
    for g, seconds in cpu.items():
        out[g if g.startswith("py_") else f"cpu_{g}"] = seconds / gigabytes
    return out


def _down(lab: Lab) -> None:
    lab.teardown()
    left = lab.leftovers()
    if left:
        progress(f"ab: lab {lab.names.stem} left behind {left}")


def _report(results: dict[str, list[dict[str, float]]], loads: list[float]) -> str:
    lines = [
        f"load average (1 min) per round: {', '.join(f'{x:.1f}' for x in loads)}",
        "",
        "| metric | stock | before | after | before ÷ stock (same round) "
        "| after ÷ stock (same round) |",
        "|---|---|---|---|---|---|",
    ]
    for m in METRICS:
        med = {v: statistics.median(r[m] for r in results[v]) for v in VARIANTS}
        cells = [f"{med[v]:.3g}" for v in VARIANTS]
        for v in ("before", "after"):
            ratios = [
                r[m] / s[m] for r, s in zip(results[v], results["stock"], strict=True) if s[m]
            ]
            cells.append(
                f"{statistics.median(ratios):.3f} [{min(ratios):.2f}–{max(ratios):.2f}]"
                if ratios
                else "–"
            )
        lines.append(f"| {m} | {' | '.join(cells)} |")
    return "\n".join(lines)


def run(before_src: Path, rounds: int, sizes: E2eSizes) -> str:
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    loads: list[float] = []
    saved = os.environ.get("PYTHONPATH")
    with contextlib.ExitStack() as stack:
        labs: dict[str, Lab] = {}
        for variant, prefix in zip(VARIANTS, ("ha", "hb", "hc"), strict=True):
            lab = Lab(prefix=prefix).build()
            labs[variant] = lab
            stack.callback(_down, lab)
        stack.enter_context(StockTunnel(labs["stock"]))
        try:
            for variant, src in (("before", before_src), ("after", HERE / "src")):
                os.environ["PYTHONPATH"] = os.pathsep.join([str(src), str(HERE)])
                stack.enter_context(product_tunnel(labs[variant], "direct"))
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
        deadline = time.monotonic() + BUDGET_S
        for r in range(rounds):
            if time.monotonic() > deadline:
                progress(f"ab: budget spent after {r} round(s)")
                break
            loads.append(os.getloadavg()[0])
            turn = VARIANTS[r % 3 :] + VARIANTS[: r % 3]
            for variant in turn:
                results[variant].append(measure(labs[variant], sizes))
                progress(f"ab: round {r} {variant}: {results[variant][-1]}")
        loads.append(os.getloadavg()[0])
    return _report(results, loads)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e.ab", description=__doc__)
    parser.add_argument("--before", type=Path, required=True, help="the other code's src/")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    if not (args.before / "higgs" / "__init__.py").is_file():
        parser.error(f"--before {args.before}: no higgs package there (give a src/ directory)")
    if not 1 <= args.rounds <= 50:
        parser.error("--rounds: 1 to 50")
    exit_on_sigterm()
    print(run(args.before, args.rounds, E2eSizes(seconds=args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
