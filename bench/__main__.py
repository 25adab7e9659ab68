"""Runs every benchmark: ``python -m bench [--smoke] [--only PART,...]`` (parts: e2e, relay,
control, udprelay, punch, profile, growth).

Writes the Markdown report to ``bench/results/report-<date>.md`` (gitignored) and prints it
on stdout; progress lines go to stderr. Each part can also run alone:
``python -m bench.e2e``, ``python -m bench.relay``, ``python -m bench.control``,
``python -m bench.udprelay``, ``python -m bench.punch``, ``python -m bench.profile``,
``python -m bench.growth``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.harness import Report, Section, exit_on_sigterm, progress

__all__ = ["PARTS", "main", "relay_section"]

RESULTS = Path(__file__).resolve().parent / "results"


def relay_section(smoke: bool) -> Section:
    """The relay engineer's benchmark (bench/relay), run as its own process: its stdout (its
    Markdown tables) goes into the report as it is, its stderr (progress) passes through."""
    title = 'Relay (bench/relay, issue 3 "Performance")'
    argv = [sys.executable, "-m", "bench.relay", *(["--smoke"] if smoke else [])]
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    timeout = 600 if smoke else 3600
    t0 = time.monotonic()
    try:
        out = subprocess.run(
            argv, stdout=subprocess.PIPE, text=True, timeout=timeout, cwd=root, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return Section(title, text=f"Not available: bench/relay did not finish within {timeout} s.")
    took = time.monotonic() - t0
    body = out.stdout.strip()
    if out.returncode != 0:
        return Section(
            title,
            text=f"bench/relay exited {out.returncode} after {took:.0f} s."
            + (f"\n\n{_demote(body)}" if body else ""),
        )
    if not body:
        return Section(
            title,
            text="Not available: bench/relay printed no table (the relay benchmark is still "
            "being written in the relay branch).",
        )
    return Section(title, text=_demote(body))


def _demote(markdown: str) -> str:
    """Headings of a sub-report one level below this report's sections; its own title (a
    level-1 heading) dropped."""
    lines = []
    for line in markdown.splitlines():
        if line.startswith("# "):
            continue
        if line.startswith("#") and line.lstrip("#").startswith(" "):
            line = "#" + line
        lines.append(line)
    return "\n".join(lines).strip()


def _e2e(smoke: bool, rounds: int | None) -> Section:
    from bench.e2e.__main__ import run

    return run(smoke=smoke, rounds=rounds)


def _control(smoke: bool, rounds: int | None) -> Section:
    from bench.control.__main__ import run

    return run(smoke=smoke, rounds=rounds)


def _udprelay(smoke: bool, rounds: int | None) -> Section:
    from bench.udprelay.__main__ import run

    return run(smoke=smoke, rounds=rounds)


def _punch(smoke: bool, rounds: int | None) -> Section:
    from bench.punch.__main__ import run

    return run(smoke=smoke, rounds=rounds)


def _profile(smoke: bool, rounds: int | None) -> Section:
    from bench.profile import run

    return run(smoke=smoke)


def _growth(smoke: bool, rounds: int | None) -> Section:
    from bench.growth.__main__ import run

    return run(smoke=smoke)


PARTS: dict[str, Callable[[bool, int | None], Section]] = {
    "e2e": _e2e,
    "relay": lambda smoke, rounds: relay_section(smoke),
    "control": _control,
    "udprelay": _udprelay,
    "punch": _punch,
    "profile": _profile,
    "growth": _growth,
}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--smoke", action="store_true", help="seconds per part, tiny sizes")
    p.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    p.add_argument("--rounds", type=int, help="rounds per part (default: 3, smoke: 1)")
    p.add_argument("--results", type=Path, default=RESULTS, help="where the report goes")
    args = p.parse_args(argv)
    exit_on_sigterm()
    parts = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; parts are {', '.join(PARTS)}")
    report = Report("Higgs.net benchmarks", smoke=args.smoke)
    for name in parts:
        progress(f"bench: {name}")
        try:
            report.add(PARTS[name](args.smoke, args.rounds))
        except Exception as exc:  # one broken part must not hide the others' tables
            report.add(Section(name, text=f"Failed: {type(exc).__name__}: {exc}"))
            progress(f"bench: {name} failed: {exc}")
    path = report.write(args.results)
    print(report.render())
    progress(f"bench: report written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
