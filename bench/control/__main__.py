"""``python -m bench.control [--smoke] [--rounds N]``: the control plane under load
(issue 7, items 3 and 4): registration of N simulated nodes, route requests per second and
latency while the nodes heartbeat, on SQLite and PostgreSQL, beside a FastAPI reference
measured in the same round; and how each figure grows with sessions and nodes.

For a quick look while changing the server, narrow the run (the tables keep their shape):
``--nodes 1000 --sessions 10 --seconds 4 --databases sqlite --no-reference``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import aiohttp

from bench.harness import (
    Budget,
    Case,
    Report,
    Results,
    Section,
    Table,
    cpu_seconds,
    exit_on_sigterm,
    fmt,
    progress,
    rss_bytes,
    run_rounds,
    unavailable_notes,
)

from .load import NodeSim, register_nodes, route_window
from .servers import (
    SERVER_CPU,
    RunningServer,
    bosonserver,
    nats_server,
    postgres_cluster,
    reference_server,
    server_unavailable,
)

__all__ = ["ControlSizes", "main", "run"]

GENERATOR_CPU = 0
REFERENCE = "reference: FastAPI, fixed answer"
DATABASES = ("SQLite", "PostgreSQL")
MIB = 1024 * 1024


@dataclass(frozen=True)
class ControlSizes:
    nodes: tuple[int, ...] = (10, 100, 1000)
    sessions: tuple[int, ...] = (1, 10, 100)
    default_sessions: int = 10
    heartbeat_interval: float = 15.0
    warmup: float = 1.0
    seconds: float = 8.0
    max_requests: int = 100_000
    # Registering 10,000 nodes took 161-174 s on a loaded machine (2026-12-03): the bound is
    # for a registration that hangs, not a target.
    register_seconds: float = 300.0
    # Issue 14 item 5: N nodes heartbeating on one instance, and one instance against two.
    scale_nodes: int = 10_000
    cluster_nodes: int = 1000

    @property
    def full_nodes(self) -> int:
        return max(self.nodes)


FULL = ControlSizes()
# One N per store (each case starts a server: that, not the window, is the smoke's cost).
SMOKE = ControlSizes(
    nodes=(4,),
    sessions=(1, 2),
    default_sessions=2,
    heartbeat_interval=1.0,
    warmup=0.1,
    seconds=0.5,
    max_requests=200,
    register_seconds=30.0,
    scale_nodes=8,
    cluster_nodes=4,
)
ONE, TWO = "one instance", "two instances"
TARGET_CPU_RATIO = 1.10  # two instances: at most 10 % more server CPU per route than one


def row_name(db: str, n: int) -> str:
    return f"{db} N={n}"


def _http(base_url: str) -> aiohttp.ClientSession:
    # trust_env off: loopback only, whatever proxy the environment names.
    return aiohttp.ClientSession(
        base_url,
        connector=aiohttp.TCPConnector(limit=256),
        timeout=aiohttp.ClientTimeout(total=30),
        trust_env=False,
    )


def _cpu(servers: Sequence[RunningServer]) -> float:
    return sum(cpu_seconds(s.pid) for s in servers)


async def _window(
    srv: RunningServer | Sequence[RunningServer],
    sizes: ControlSizes,
    *,
    token: str,
    sessions: int,
    nodes: list[NodeSim],
) -> dict[str, float]:
    """One window; with several instances the load is dealt round robin and their CPU summed."""
    servers = [srv] if isinstance(srv, RunningServer) else list(srv)
    me = os.getpid()
    srv_cpu0, gen_cpu0, t0 = _cpu(servers), cpu_seconds(me), time.perf_counter()
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(_http(s.url)) for s in servers]
        res = await route_window(
            clients,
            client_token=token,
            sessions=sessions,
            nodes=nodes,
            heartbeat_interval=sizes.heartbeat_interval,
            warmup=sizes.warmup,
            seconds=sizes.seconds,
            max_requests=sizes.max_requests,
        )
    wall = time.perf_counter() - t0
    srv_cpu = _cpu(servers) - srv_cpu0
    values = res.metrics()
    routes = len(res.route_latencies)
    values["srv_cpu_pct"] = 100.0 * srv_cpu / wall
    # Per route over the whole window (warmup included): its close and the heartbeats too.
    values["srv_ms_per_route"] = (
        1000.0 * srv_cpu / routes * (res.seconds / wall) if routes else float("nan")
    )
    values["gen_cpu_pct"] = 100.0 * (cpu_seconds(me) - gen_cpu0) / wall
    values["rss_mib"] = sum(rss_bytes(s.pid) for s in servers) / MIB
    if res.errors:
        progress(f"control: errors {dict(res.errors)}")
    return values


def _prefixed(s: int, values: Mapping[str, float]) -> dict[str, float]:
    return {f"S={s}:{k}": v for k, v in values.items()}


def _reference_case(sizes: ControlSizes) -> Case:
    def run() -> Mapping[str, float]:
        out: dict[str, float] = {}
        with reference_server() as srv:
            # The reference gets the same heartbeat load as the full-size server: fake ids.
            fake = [NodeSim(f"n_{i:016x}", "hgn_x") for i in range(sizes.full_nodes)]
            for s in sizes.sessions:
                out |= _prefixed(
                    s, asyncio.run(_window(srv, sizes, token="hgc_x", sessions=s, nodes=fake))
                )
        return out

    return Case(REFERENCE, run)


async def _register(
    srv: RunningServer, enroll: str, n: int, sizes: ControlSizes
) -> tuple[list[NodeSim], float, int]:
    async with _http(srv.url) as client:
        nodes, took, errors = await register_nodes(
            client, enroll, n, seconds=sizes.register_seconds
        )
    if len(nodes) < n:
        raise RuntimeError(f"registered {len(nodes)}/{n} nodes; errors {dict(errors)}")
    return nodes, took, sum(errors.values())


def _scale_case(db: str, sizes: ControlSizes, new_database: Callable[[], str] | None) -> Case:
    """``scale_nodes`` registered nodes heartbeating on one instance, S default sessions."""
    n, s = sizes.scale_nodes, sizes.default_sessions

    def run() -> Mapping[str, float]:
        url = new_database() if new_database is not None else None
        with bosonserver(url) as srv:
            enroll, token = srv.provision(n, "bench")
            nodes, took, _refused = asyncio.run(_register(srv, enroll, n, sizes))
            out = {"reg_s": took}
            return out | asyncio.run(_window(srv, sizes, token=token, sessions=s, nodes=nodes))

    return Case(f"scale {row_name(db, n)}", run)


def _cluster_case(
    instances: int, sizes: ControlSizes, new_database: Callable[[], str] | None
) -> Case:
    """A scale-out deployment of ``instances`` on PostgreSQL and NATS, the load dealt to the
    instances in turn (no balancer: its CPU is not the server's)."""
    n, s = sizes.cluster_nodes, sizes.default_sessions

    def run() -> Mapping[str, float]:
        if new_database is None:
            raise RuntimeError("PostgreSQL is not available")
        url = new_database()
        with contextlib.ExitStack() as stack:
            bus = stack.enter_context(nats_server())
            # The first alone: it runs the migrations.
            servers = [stack.enter_context(bosonserver(url, bus, "bench-a"))]
            for i in range(1, instances):
                servers.append(stack.enter_context(bosonserver(url, bus, f"bench-{i}")))
            enroll, token = servers[0].provision(n, "bench")
            nodes, _took, _refused = asyncio.run(_register(servers[0], enroll, n, sizes))
            return asyncio.run(_window(servers, sizes, token=token, sessions=s, nodes=nodes))

    return Case(ONE if instances == 1 else TWO, run)


def _server_case(
    db: str, n: int, sizes: ControlSizes, new_database: Callable[[], str] | None
) -> Case:
    def run() -> Mapping[str, float]:
        url = new_database() if new_database is not None else None
        out: dict[str, float] = {}
        with bosonserver(url) as srv:
            enroll, token = srv.provision(n, "bench")
            out["rss_idle_mib"] = rss_bytes(srv.pid) / MIB

            nodes, took, refused = asyncio.run(_register(srv, enroll, n, sizes))
            out["reg_refused"] = float(refused)
            out["reg_s"] = took
            out["reg_rate"] = n / took
            out["rss_nodes_mib"] = rss_bytes(srv.pid) / MIB
            windows = list(sizes.sessions) if n == sizes.full_nodes else [sizes.default_sessions]
            for s in windows:
                out |= _prefixed(
                    s, asyncio.run(_window(srv, sizes, token=token, sessions=s, nodes=nodes))
                )
        return out

    return Case(row_name(db, n), run)


# --- tables ----------------------------------------------------------------------------------


def _main_table(res: Results, sizes: ControlSizes, rows: Sequence[str]) -> Table:
    s = sizes.default_sessions
    t = Table(
        [
            "server",
            "routes/s",
            "ratio to ref",
            "route p50 ms",
            "route p99 ms",
            "close p99 ms",
            "heartbeats/s",
            "heartbeat p99 ms",
            "server CPU %",
            "server RSS MiB",
            "generator CPU %",
            "errors",
        ],
        f"Route requests: {s} clients in closed loops (POST /v1/routes, then DELETE the "
        f"session) while {sizes.full_nodes:,} registered nodes heartbeat every "
        f"{sizes.heartbeat_interval:g} s",
    )
    for row in rows:
        if row in res.unavailable:
            t.add([row, "not available (see below)", *[""] * 10])
            continue
        p = f"S={s}:"
        ratio = (
            "1.00" if row == REFERENCE else _fmt_ratio(res.ratio(row, p + "route_rps", REFERENCE))
        )
        t.add(
            [
                row,
                res.cell(row, p + "route_rps"),
                ratio,
                res.cell(row, p + "route_p50"),
                res.cell(row, p + "route_p99"),
                res.cell(row, p + "close_p99"),
                res.cell(row, p + "hb_rate", spread=False),
                res.cell(row, p + "hb_p99"),
                res.cell(row, p + "srv_cpu_pct", spread=False),
                res.cell(row, p + "rss_mib"),
                res.cell(row, p + "gen_cpu_pct", spread=False),
                fmt(max(res.rounds(row, p + "errors"), default=0)),
            ]
        )
    return t


def _scale_table(res: Results, sizes: ControlSizes) -> Table:
    n = sizes.scale_nodes
    t = Table(
        [
            "server",
            "nodes",
            "heartbeats/s",
            "heartbeat p99 ms (target < 100)",
            "route p99 ms (target < 50)",
            "routes/s",
            "server CPU ms per route",
            "server CPU %",
            "load generator CPU %",
            "time to register all s",
            "errors",
        ],
        f"{n:,} nodes heartbeating every {sizes.heartbeat_interval:g} s on one instance, "
        f"{sizes.default_sessions} clients routing (issue 14 item 5)",
    )
    for db in DATABASES:
        row = f"scale {row_name(db, n)}"
        if row in res.unavailable:
            t.add([db, f"{n:,}", "not available (see below)", *[""] * 8])
            continue
        t.add(
            [
                db,
                f"{n:,}",
                res.cell(row, "hb_rate", spread=False),
                res.cell(row, "hb_p99"),
                res.cell(row, "route_p99"),
                res.cell(row, "route_rps"),
                res.cell(row, "srv_ms_per_route"),
                res.cell(row, "srv_cpu_pct", spread=False),
                # The generator is one event loop on its own CPU: near 100 %, the latencies
                # are its queueing as much as the server's.
                res.cell(row, "gen_cpu_pct", spread=False),
                res.cell(row, "reg_s"),
                fmt(max(res.rounds(row, "errors"), default=0)),
            ]
        )
    return t


def _cluster_table(res: Results, sizes: ControlSizes) -> Table:
    t = Table(
        [
            "deployment",
            "routes/s",
            "route p99 ms",
            "heartbeat p99 ms",
            "server CPU ms per route (all instances)",
            f"ratio to one (target ≤ {TARGET_CPU_RATIO:.2f})",
            "errors",
        ],
        f"One instance against two (PostgreSQL + NATS, {sizes.cluster_nodes:,} nodes, "
        f"{sizes.default_sessions} clients dealt to the instances in turn; issue 14 item 5). "
        f"Both instances share CPU {SERVER_CPU}: the figure is CPU per route, not throughput",
    )
    for row in (ONE, TWO):
        if row in res.unavailable:
            t.add([row, "not available (see below)", *[""] * 5])
            continue
        ratio = "1.00" if row == ONE else _fmt_ratio(res.ratio(row, "srv_ms_per_route", ONE))
        t.add(
            [
                row,
                res.cell(row, "route_rps"),
                res.cell(row, "route_p99"),
                res.cell(row, "hb_p99"),
                res.cell(row, "srv_ms_per_route"),
                ratio,
                fmt(max(res.rounds(row, "errors"), default=0)),
            ]
        )
    return t


def _fmt_ratio(r: float | None) -> str:
    return "–" if r is None else f"{r:.2f}"


def _registration_table(res: Results, sizes: ControlSizes) -> Table:
    t = Table(
        [
            "server",
            "nodes",
            "time to register all s",
            "registrations/s",
            "RSS idle MiB",
            "RSS with nodes MiB",
            "refused (retried) max",
        ],
        "Registration of N nodes (16 requests in flight; a refused registration is retried "
        "up to 3 times, as a node would)",
    )
    for db in DATABASES:
        for n in sizes.nodes:
            row = row_name(db, n)
            if row in res.unavailable:
                t.add([db, f"{n:,}", "not available (see below)", "", "", "", ""])
                continue
            t.add(
                [
                    db,
                    f"{n:,}",
                    res.cell(row, "reg_s"),
                    res.cell(row, "reg_rate"),
                    res.cell(row, "rss_idle_mib"),
                    res.cell(row, "rss_nodes_mib"),
                    fmt(max(res.rounds(row, "reg_refused"), default=0)),
                ]
            )
    return t


def _growth(res: Results, points: Sequence[tuple[str, str]], metric: str) -> list[str]:
    """Median of ``metric`` at each point, with the factor against the first point."""
    meds = [res.median(row, prefix + metric) for row, prefix in points]
    base = meds[0]
    cells = []
    for m in meds:
        if m is None:
            cells.append("–")
        elif base:
            cells.append(f"{fmt(m)} (×{m / base:.2f})")
        else:
            cells.append(fmt(m))
    return cells


_GROWTH_METRICS = (
    ("routes/s", "route_rps"),
    ("route p50 ms", "route_p50"),
    ("route p99 ms", "route_p99"),
    ("server CPU ms per route", "srv_ms_per_route"),
    ("heartbeat p99 ms", "hb_p99"),
    ("server RSS MiB", "rss_mib"),
)


def _growth_tables(res: Results, sizes: ControlSizes) -> list[Table]:
    tables = []
    n_max, s_def = sizes.full_nodes, sizes.default_sessions
    by_s = Table(
        ["server", "figure", *(f"S={s}" for s in sizes.sessions)],
        f"Growth with sessions (clients in flight), N={n_max:,} nodes; (×k) = factor "
        f"against S={sizes.sessions[0]} — sessions grow ×{sizes.sessions[-1] // sizes.sessions[0]}",
    )
    for row in [REFERENCE, *(row_name(db, n_max) for db in DATABASES)]:
        if row in res.unavailable:
            by_s.add([row, "not available", *[""] * len(sizes.sessions)])
            continue
        for label, metric in _GROWTH_METRICS:
            points = [(row, f"S={s}:") for s in sizes.sessions]
            by_s.add([row, label, *_growth(res, points, metric)])
    tables.append(by_s)
    by_n = Table(
        ["server", "figure", *(f"N={n:,}" for n in sizes.nodes)],
        f"Growth with registered nodes, S={s_def} sessions; (×k) = factor against "
        f"N={sizes.nodes[0]} — nodes grow ×{sizes.nodes[-1] // sizes.nodes[0]}",
    )
    for db in DATABASES:
        rows = [row_name(db, n) for n in sizes.nodes]
        if any(r in res.unavailable for r in rows):
            by_n.add([db, "not available", *[""] * len(sizes.nodes)])
            continue
        for label, metric in _GROWTH_METRICS:
            by_n.add([db, label, *_growth(res, [(r, f"S={s_def}:") for r in rows], metric)])
        reg = [(r, "") for r in rows]
        by_n.add([db, "registration ms per node", *_growth_per_node(res, reg, sizes.nodes)])
    tables.append(by_n)
    return tables


def _growth_per_node(
    res: Results, points: Sequence[tuple[str, str]], nodes: Sequence[int]
) -> list[str]:
    vals = [
        (m * 1000.0 / n if (m := res.median(row, "reg_s")) is not None else None)
        for (row, _), n in zip(points, nodes, strict=True)
    ]
    base = vals[0]
    return ["–" if v is None else (f"{fmt(v)} (×{v / base:.2f})" if base else fmt(v)) for v in vals]


# --- running ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _pinned(cpu: int) -> Iterator[None]:
    """This process (the load generator) on one CPU, the server on the other."""
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        before = set()
    try:
        yield
    finally:
        if before:
            os.sched_setaffinity(0, before)


def run(
    *,
    smoke: bool = False,
    rounds: int | None = None,
    sizes: ControlSizes | None = None,
    databases: Sequence[str] = DATABASES,
    reference: bool = True,
    scaleout: bool = True,
) -> Section:
    sizes = sizes or (SMOKE if smoke else FULL)
    n_rounds = rounds or (1 if smoke else 3)
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        missing = server_unavailable()
        pg_factory: Callable[[], str] | None = None
        pg_missing: str | None = missing
        if missing is None and "PostgreSQL" in databases:
            try:
                pg_factory = stack.enter_context(postgres_cluster())
            except RuntimeError as exc:
                pg_missing = str(exc)
        ref = _reference_case(sizes)
        if not reference:
            ref.unavailable = "left out of this run (--no-reference)"
        cases = [ref]
        for db in DATABASES:
            for n in sizes.nodes:
                case = _server_case(db, n, sizes, pg_factory if db == "PostgreSQL" else None)
                case.unavailable = missing if db == "SQLite" else pg_missing
                if db not in databases:
                    case.unavailable = "left out of this run (--databases)"
                cases.append(case)
        for db in DATABASES:
            case = _scale_case(db, sizes, pg_factory if db == "PostgreSQL" else None)
            case.unavailable = missing if db == "SQLite" else pg_missing
            if db not in databases or not scaleout:
                case.unavailable = "left out of this run (--databases, --no-scaleout)"
            cases.append(case)
        for k in (1, 2):
            case = _cluster_case(k, sizes, pg_factory)
            case.unavailable = pg_missing
            if "PostgreSQL" not in databases or not scaleout:
                case.unavailable = "left out of this run (--databases, --no-scaleout)"
            cases.append(case)
        stack.enter_context(_pinned(GENERATOR_CPU))
        res = run_rounds(
            cases,
            rounds=n_rounds,
            budget=Budget(seconds=300 if smoke else 1800),
            label="control",
        )
    rows = [REFERENCE, *(row_name(db, sizes.full_nodes) for db in DATABASES)]
    notes += unavailable_notes(res)
    return Section(
        "Control plane under load (issue 7, items 3 and 4)",
        text=(
            f"{n_rounds} round(s), cases shuffled within each round. Each server is a real "
            f"process on 127.0.0.1 pinned to CPU {SERVER_CPU}; the load generator (this "
            f"process: aiohttp, one event loop) runs on CPU {GENERATOR_CPU}. bosonserver runs "
            "with its API rate limits raised (BOSON_RATE_LIMIT_PER_S/BURST) since all load "
            "comes from one address. Each window: "
            f"{sizes.warmup:g} s warm-up, {sizes.seconds:g} s measured. A fresh server and "
            "database for every case; PostgreSQL is a throwaway cluster (fsync off) from the "
            "server's integration-test helper. The reference is a FastAPI app under the same "
            "uvicorn settings that validates a route body and returns a fixed answer: the floor "
            "of the HTTP stack on this machine."
        ),
        tables=[
            _main_table(res, sizes, rows),
            _registration_table(res, sizes),
            *_growth_tables(res, sizes),
            _scale_table(res, sizes),
            _cluster_table(res, sizes),
        ],
        notes=notes,
    )


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in text.split(",")}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers separated by commas") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every number must be at least 1")
    return values


def _databases(text: str) -> tuple[str, ...]:
    names = {d.lower(): d for d in DATABASES}
    try:
        return tuple(names[v.strip().lower()] for v in text.split(","))
    except KeyError as exc:
        raise argparse.ArgumentTypeError(
            f"unknown database {exc.args[0]!r} (use {', '.join(names)})"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.control",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--smoke", action="store_true", help="seconds, tiny sizes")
    p.add_argument("--rounds", type=int)
    p.add_argument("--nodes", type=_ints, help="registered nodes, e.g. 1000 or 10,100,1000")
    p.add_argument("--sessions", type=_ints, help="clients in flight, e.g. 10 or 1,10,100")
    p.add_argument("--seconds", type=float, help="measured seconds per window")
    p.add_argument(
        "--databases", type=_databases, default=DATABASES, help="sqlite,postgresql (default both)"
    )
    p.add_argument("--no-reference", action="store_true", help="skip the FastAPI reference")
    p.add_argument("--scale-nodes", type=int, help="nodes of the heartbeat row (10000)")
    p.add_argument("--cluster-nodes", type=int, help="nodes of the one-vs-two row (1000)")
    p.add_argument("--no-scaleout", action="store_true", help="skip the issue 14 rows")
    args = p.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.nodes:
        sizes = dataclasses.replace(sizes, nodes=args.nodes)
    if args.sessions:
        sizes = dataclasses.replace(
            sizes, sessions=args.sessions, default_sessions=args.sessions[len(args.sessions) // 2]
        )
    if args.seconds:
        sizes = dataclasses.replace(sizes, seconds=args.seconds)
    if args.scale_nodes:
        sizes = dataclasses.replace(sizes, scale_nodes=args.scale_nodes)
    if args.cluster_nodes:
        sizes = dataclasses.replace(sizes, cluster_nodes=args.cluster_nodes)
    exit_on_sigterm()
    report = Report("Higgs.net control-plane benchmark", smoke=args.smoke)
    report.add(
        run(
            smoke=args.smoke,
            rounds=args.rounds,
            sizes=sizes,
            databases=args.databases,
            reference=not args.no_reference,
            scaleout=not args.no_scaleout,
        )
    )
    print(report.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
