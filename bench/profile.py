"""``python -m bench.profile [--smoke]``: where bosonserver spends its CPU under route load.

The slowest path the benchmarks found is the control plane's route request (a few to tens of
ms of server CPU each, against well under one for the FastAPI reference). This samples the
real server with py-spy while simulated nodes heartbeat and clients ask for routes, and
summarises the samples: time by package of the innermost frame (self time), and the
functions with the most self and inclusive time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import linecache
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.harness import Report, Section, Table, exit_on_sigterm, progress

__all__ = ["Profile", "main", "parse_raw", "run"]

# The innermost frame's file decides where self time goes; first match wins.
_PACKAGES: tuple[tuple[str, str], ...] = (
    ("higgs (our code)", "/higgs/"),
    ("SQLAlchemy", "/sqlalchemy/"),
    ("aiosqlite / sqlite3", "sqlite"),
    ("asyncpg", "/asyncpg/"),
    ("pydantic", "/pydantic"),
    ("FastAPI / Starlette", "/fastapi/"),
    ("FastAPI / Starlette", "/starlette/"),
    ("uvicorn / h11 / httptools", "/uvicorn/"),
    ("uvicorn / h11 / httptools", "/h11/"),
    ("uvicorn / h11 / httptools", "/httptools/"),
    ("prometheus-client", "/prometheus_client/"),
    ("logging", "/logging/"),
    ("json", "/json/"),
    ("asyncio / uvloop (C loop: I/O and waits)", "/asyncio/"),
    ("asyncio / uvloop (C loop: I/O and waits)", "/uvloop/"),
    ("threading / queue", "/threading.py"),
    ("threading / queue", "/queue.py"),
    ("cryptography", "/cryptography/"),
)
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass
class Profile:
    samples: int  # busy samples (idle waits below left out)
    idle: int
    by_package: Counter[str]
    self_time: Counter[str]
    inclusive: Counter[str]


def _package(file: str) -> str:
    file = "/" + file.lstrip("/")  # py-spy may print paths relative to sys.path
    for name, marker in _PACKAGES:
        if marker in file:
            return name
    return "other"


def _short(func: str, file: str) -> str:
    for marker in ("/site-packages/", "/src/", "/lib/python3.11/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{func} ({file})"


def _is_wait(func: str, file: str, line: str | None) -> bool:
    """A leaf frame that is a thread blocked waiting for work, which py-spy's idle detection
    counted as busy here: aiosqlite's worker thread in ``tx.get()`` (checked against the
    installed source, so another aiosqlite version with other line numbers still matches)."""
    if func != "_connection_worker_thread" or not line:
        return False
    spec = importlib.util.find_spec("aiosqlite.core")
    if spec is None or spec.origin is None:
        return False
    return ".get(" in linecache.getline(spec.origin, int(line))


def parse_raw(text: str) -> Profile:
    """py-spy ``--format raw`` (collapsed stacks: ``frame;frame;... count`` per line)."""
    by_package: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = []
        for raw in stack.split(";"):
            m = _FRAME.match(raw.strip())
            if m:
                frames.append((m.group("func"), m.group("file"), m.group("line")))
            elif raw.strip():
                frames.append((raw.strip(), "", None))
        # A thread inside aiosqlite's queue get() waits, whatever frames lie below it.
        if not frames or any(_is_wait(*f) for f in frames):
            idle += count
            continue
        total += count
        func, file, _ = frames[-1]
        by_package[_package(file)] += count
        self_time[_short(func, file)] += count
        for key in {_short(f, fl) for f, fl, _ in frames}:
            inclusive[key] += count
    return Profile(total, idle, by_package, self_time, inclusive)


def _record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [
            spy,
            "record",
            "-p",
            str(pid),
            "-d",
            f"{seconds:g}",
            "-r",
            "200",
            "-f",
            "raw",
            "-o",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def run(*, smoke: bool = False, nodes: int | None = None) -> Section:
    from bench.control.__main__ import FULL, GENERATOR_CPU, SMOKE, _http, _pinned
    from bench.control.load import register_nodes, route_window
    from bench.control.servers import bosonserver, server_unavailable

    sizes = SMOKE if smoke else FULL
    title = "Profile of the slowest path: route requests in bosonserver"
    missing = server_unavailable()
    if missing:
        return Section(title, text=f"Not available: {missing}.")
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        return Section(title, text="Not available: py-spy is not installed (make setup).")
    n = nodes or (4 if smoke else 1000)
    sessions = 2 if smoke else 10
    seconds = 1.0 if smoke else 15.0
    with (
        tempfile.TemporaryDirectory(prefix="higgs-bench-prof-") as tmp,
        contextlib.ExitStack() as st,
    ):
        st.enter_context(_pinned(GENERATOR_CPU))
        srv = st.enter_context(bosonserver(None))
        enroll, token = srv.provision(n, "bench")
        raw = Path(tmp) / "profile.txt"

        async def load() -> int:
            async with _http(srv.url) as client:
                sims, _, _ = await register_nodes(client, enroll, n, seconds=max(120.0, n * 0.03))
                progress(f"profile: {len(sims)} nodes registered; sampling {seconds:g} s")
                spy = _record(srv.pid, seconds, raw)
                res = await route_window(
                    client,
                    client_token=token,
                    sessions=sessions,
                    nodes=sims,
                    heartbeat_interval=sizes.heartbeat_interval,
                    warmup=0.0,
                    seconds=seconds,
                    max_requests=sizes.max_requests,
                )
                _, err = await asyncio.to_thread(spy.communicate, timeout=seconds + 60)
                if spy.returncode != 0:
                    raise RuntimeError(f"py-spy failed: {err.decode()[-400:]}")
                return len(res.route_latencies)

        routes = asyncio.run(load())
        prof = parse_raw(raw.read_text())
    return _section(title, prof, n=n, sessions=sessions, seconds=seconds, routes=routes)


def _pct(count: int, total: int) -> str:
    return f"{100.0 * count / total:.1f}" if total else "–"


def _section(
    title: str, prof: Profile, *, n: int, sessions: int, seconds: float, routes: int
) -> Section:
    total = prof.samples
    pkg = Table(["innermost frame in", "% of samples"], "Self time by package")
    for name, count in prof.by_package.most_common():
        pkg.add([name, _pct(count, total)])
    top_self = Table(["function (file)", "self %"], "Top functions by self time")
    for name, count in prof.self_time.most_common(12):
        top_self.add([name, _pct(count, total)])
    ours = Table(["function (file)", "inclusive %"], "Our code by inclusive time (higgs/…)")
    for name, count in [(k, v) for k, v in prof.inclusive.most_common() if "higgs/" in k][:12]:
        ours.add([name, _pct(count, total)])
    return Section(
        title,
        text=(
            f"py-spy (200 Hz, all threads, idle excluded) on the real bosonserver (SQLite) for "
            f"{seconds:g} s while {n:,} simulated nodes heartbeat and {sessions} clients ask "
            f"for routes in closed loops ({routes:,} routes in the window). {total:,} busy "
            f"samples; {prof.idle:,} more were threads blocked waiting for work (empty stacks, "
            "aiosqlite's worker in its queue get) and are left out. Time in C code (sqlite3, "
            "uvloop) is charged to the Python frame that called it: `Runner.run` as the "
            "innermost frame is uvloop's own C loop (socket I/O, callbacks, and waiting)."
        ),
        tables=[pkg, top_self, ours],
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--nodes", type=int, help="simulated nodes heartbeating (default 1000)")
    args = p.parse_args(argv)
    exit_on_sigterm()
    report = Report("Higgs.net profile", smoke=args.smoke)
    report.add(run(smoke=args.smoke, nodes=args.nodes))
    print(report.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
