"""The shared benchmark harness: rounds, shuffling, medians, ratios, /proc sampling, reports.

The machine is shared and noisy (a 2-vCPU KVM guest that other people use at the same time),
so no figure is a single run: every case runs once per round, the cases of a round run in a
shuffled order, and a table shows the median over rounds with the [min-max] spread. Ratios
against a reference are taken per round (reference and candidate ran minutes apart at most,
under the same neighbours' load) and the median of those per-round ratios is reported.

    results = run_rounds(cases, rounds=3, budget=Budget(seconds=600))
    table = Table(["row", "Mbit/s"])
    table.add(["stock", results.cell("stock", "tcp_up")])
    report = Report("e2e"); report.add(Section("Throughput", tables=[table]))
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import random
import signal
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

__all__ = [
    "Budget",
    "Case",
    "ProcSample",
    "Report",
    "Results",
    "Section",
    "Table",
    "Unavailable",
    "cpu_seconds",
    "exit_on_sigterm",
    "fmt",
    "percentile",
    "progress",
    "rss_bytes",
    "run_rounds",
    "sample_procs",
    "set_progress_stream",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_START = time.monotonic()
_progress_stream: TextIO = sys.stderr


class Unavailable(Exception):
    """A row that cannot be measured in this build; the table says why instead of a number."""


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so the cleanup of servers, clusters and labs runs."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def part_main(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str | None,
    title: str,
    run: Callable[..., Section],
) -> int:
    """The command line of one benchmark part run on its own (`python -m bench.<part>`)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--smoke", action="store_true", help="seconds, tiny sizes")
    p.add_argument("--rounds", type=int)
    args = p.parse_args(argv)
    exit_on_sigterm()
    report = Report(title, smoke=args.smoke)
    report.add(run(smoke=args.smoke, rounds=args.rounds))
    print(report.render())
    return 0


def set_progress_stream(stream: TextIO) -> None:
    global _progress_stream
    _progress_stream = stream


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries only the report)."""
    print(f"[{time.monotonic() - _START:7.1f} s] {message}", file=_progress_stream, flush=True)


# --- bounds ----------------------------------------------------------------------------------


@dataclass
class Budget:
    """An upper bound on a load loop: at most ``count`` iterations and ``seconds`` of time."""

    count: int = 1_000_000
    seconds: float = 60.0
    started: float = field(default_factory=time.monotonic)

    def expired(self, done: int = 0) -> bool:
        return done >= self.count or time.monotonic() - self.started >= self.seconds

    def remaining(self) -> float:
        return max(0.0, self.seconds - (time.monotonic() - self.started))

    def __iter__(self) -> Iterator[int]:
        i = 0
        while not self.expired(i):
            yield i
            i += 1


# --- /proc -----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) in seconds, from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class ProcSample:
    """CPU seconds per PID at one instant (PIDs that vanished are left out)."""

    at: float
    cpu: Mapping[int, float]

    def cpu_since(self, earlier: ProcSample) -> float:
        """CPU seconds used between ``earlier`` and this sample by PIDs present in both."""
        return sum(max(0.0, v - earlier.cpu[p]) for p, v in self.cpu.items() if p in earlier.cpu)


def sample_procs(pids: Iterable[int]) -> ProcSample:
    cpu: dict[int, float] = {}
    for pid in pids:
        try:
            cpu[pid] = cpu_seconds(pid)
        except (OSError, ValueError, IndexError):
            continue
    return ProcSample(time.monotonic(), cpu)


# --- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def fmt(value: float | None, digits: int = 3) -> str:
    """Three significant digits, thousands separators, k/M suffix for big counts."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "∞"
    mag = abs(value)
    if mag >= 1_000_000:
        return f"{value / 1_000_000:.{max(0, digits - 1 - int(math.log10(mag / 1e6)))}f}M"
    if mag >= 100_000:
        return f"{value / 1000:.1f}k"
    if mag >= 1000:
        return f"{value:,.0f}"
    if mag == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(mag)))
    return f"{value:.{decimals}f}"


@dataclass
class Case:
    """One row of a benchmark: ``run()`` returns metric -> value for one round.

    ``unavailable`` set means the row is not measured at all and the table prints the reason;
    ``run()`` may also raise :class:`Unavailable` when it finds out only when it tries.
    """

    name: str
    run: Callable[[], Mapping[str, float]]
    unavailable: str | None = None


class Results:
    """Per-round values of (row, metric), with medians, spreads and same-round ratios."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
        self.unavailable: dict[str, str] = {}
        self.errors: dict[str, list[str]] = defaultdict(list)

    def add(self, row: str, metric: str, value: float, round_no: int) -> None:
        self.values[(row, metric)][round_no] = value

    def rounds(self, row: str, metric: str) -> list[float]:
        by_round = self.values.get((row, metric), {})
        return [v for _, v in sorted(by_round.items()) if not math.isnan(v)]

    def median(self, row: str, metric: str) -> float | None:
        vals = self.rounds(row, metric)
        return statistics.median(vals) if vals else None

    def spread(self, row: str, metric: str) -> tuple[float, float] | None:
        vals = self.rounds(row, metric)
        return (min(vals), max(vals)) if vals else None

    def ratio(self, row: str, metric: str, ref: str) -> float | None:
        """Median over rounds of value(row) / value(ref) from the same round."""
        mine, theirs = self.values.get((row, metric), {}), self.values.get((ref, metric), {})
        ratios = [
            mine[r] / theirs[r]
            for r in mine
            if r in theirs and theirs[r] and not math.isnan(mine[r]) and not math.isnan(theirs[r])
        ]
        return statistics.median(ratios) if ratios else None

    def difference(self, row: str, metric: str, ref: str) -> float | None:
        """Median over rounds of value(row) - value(ref) from the same round."""
        mine, theirs = self.values.get((row, metric), {}), self.values.get((ref, metric), {})
        diffs = [mine[r] - theirs[r] for r in mine if r in theirs]
        diffs = [d for d in diffs if not math.isnan(d)]
        return statistics.median(diffs) if diffs else None

    def cell(self, row: str, metric: str, *, spread: bool = True, scale: float = 1.0) -> str:
        """``median [min–max]`` or the reason the row is unavailable."""
        if row in self.unavailable:
            return "n/a"
        med = self.median(row, metric)
        if med is None:
            return "–"
        text = fmt(med * scale)
        rng = self.spread(row, metric)
        if spread and rng is not None and len(self.rounds(row, metric)) > 1:
            text += f" [{fmt(rng[0] * scale)}–{fmt(rng[1] * scale)}]"
        return text


def run_rounds(
    cases: Sequence[Case],
    *,
    rounds: int,
    budget: Budget | None = None,
    seed: int | None = None,
    label: str = "",
    shuffle: bool = True,
) -> Results:
    """Run every available case once per round, shuffled within each round (unless not
    ``shuffle``: then in the order given).

    A case that raises is recorded (its message goes to ``results.errors``) and the others go
    on; :class:`Unavailable` marks the row unavailable. The budget bounds the whole run: when
    it is spent no further case starts and the rounds done so far are what is reported.
    """
    results = Results()
    rng = random.Random(seed)
    for case in cases:
        if case.unavailable:
            results.unavailable[case.name] = case.unavailable
    todo = [c for c in cases if not c.unavailable]
    for round_no in range(rounds):
        order = list(todo)
        if shuffle:
            rng.shuffle(order)
        for case in order:
            if case.name in results.unavailable:
                continue
            if budget is not None and budget.expired():
                progress(f"{label}: time budget spent, stopping after round {round_no}")
                return results
            progress(f"{label} round {round_no + 1}/{rounds}: {case.name}")
            try:
                values = case.run()
            except Unavailable as exc:
                results.unavailable[case.name] = str(exc)
                progress(f"{label}: {case.name} not available: {exc}")
                continue
            except Exception as exc:
                results.errors[case.name].append(f"round {round_no + 1}: {exc}")
                progress(f"{label}: {case.name} failed: {exc}")
                continue
            for metric, value in values.items():
                results.add(case.name, metric, value, round_no)
    return results


# --- tables and reports ----------------------------------------------------------------------


class Table:
    """A Markdown table; cells are strings already formatted."""

    def __init__(self, headers: Sequence[str], title: str = "") -> None:
        self.title = title
        self.headers = list(headers)
        self.rows: list[list[str]] = []

    def add(self, cells: Sequence[str]) -> None:
        if len(cells) != len(self.headers):
            raise ValueError(f"row has {len(cells)} cells, table has {len(self.headers)} columns")
        self.rows.append([str(c) for c in cells])

    def render(self) -> str:
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        out = []
        if self.title:
            out += [f"#### {self.title}", ""]
        out.append(line(self.headers))
        out.append("|" + "|".join("---" for _ in self.headers) + "|")
        out += [line(r) for r in self.rows]
        return "\n".join(out)


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        parts = [f"## {self.title}"]
        if self.text:
            parts.append(self.text.strip())
        parts += [t.render() for t in self.tables]
        if self.notes:
            parts.append("\n".join(f"- {n}" for n in self.notes))
        return "\n\n".join(parts)


def unavailable_notes(results: Results) -> list[str]:
    notes = [f"**{row}**: not available: {why}" for row, why in results.unavailable.items()]
    for row, errs in results.errors.items():
        notes += [f"**{row}** failed in {e}" for e in errs]
    return notes


def machine_summary() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return (
        f"{os.cpu_count()} vCPU {cpu}; Linux {os.uname().release}; "
        f"Python {sys.version.split()[0]}; load average at start {load}"
    )


class Report:
    """Sections in order, rendered as one Markdown document."""

    def __init__(self, title: str, *, smoke: bool = False) -> None:
        self.title = title
        self.smoke = smoke
        self.started = _dt.datetime.now(_dt.UTC)
        self.sections: list[Section] = []
        self.header = machine_summary()

    def add(self, section: Section) -> None:
        self.sections.append(section)

    def render(self) -> str:
        head = [
            f"# {self.title}",
            "",
            f"Run {self.started:%Y-%m-%d %H:%M} UTC"
            + (" — **smoke run (tiny sizes, figures meaningless)**" if self.smoke else "")
            + f". Machine: {self.header}.",
        ]
        return "\n".join(head) + "\n\n" + "\n\n".join(s.render() for s in self.sections) + "\n"

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        suffix = "-smoke" if self.smoke else ""
        path = directory / f"report-{self.started:%Y-%m-%d-%H%M}{suffix}.md"
        path.write_text(self.render())
        return path
