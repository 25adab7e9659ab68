"""The growth lab at work: one bosonserver, one higgsnode, N stock WireGuard clients, N
simultaneous iperf3 downloads from the internet host.

Each client is a stock wireguard-go peer (wg-quick style full tunnel, ``StockClient``)
configured from the server's ``POST /v1/routes`` answer -- a product session of one account,
as a person pastes it into an official app -- not a higgsvpn daemon each: 50 Python daemons
would measure the 2-core machine's interpreter start-ups, not the node.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.e2e.measure import parse_iperf, pids_by_group, sample
from bench.harness import progress
from higgs.lab import Host, Lab, LabError
from higgs.lab.product import Product
from higgs.lab.stock import StockClient
from higgs.lab.wireguard import new_keypair

from .plan import MAX_CLIENTS, client_role, growth_plan
from .stats import Point

__all__ = [
    "DIRECT",
    "IPERF_BASE",
    "UDP_RELAY",
    "Measured",
    "PathSpec",
    "StartGate",
    "add_clients",
    "growth_lab",
    "measure",
    "parse_by_path",
    "serving",
]

# The internet host's iperf3 servers of this benchmark, one per client (an iperf3 server runs
# one test at a time); above the lab's own (IPERF_PORTS, 5201-5202).
IPERF_BASE = 5301
# A node takes 32 clients by default (docs/node.md `max_clients`); the 33rd route finds no
# node. Room for the largest N here.
NODE_CONFIG = f"max_clients = {MAX_CLIENTS + 14}\n"
# Clients brought up at once: each costs a route call, a wireguard-go start and a handshake.
_BRINGUP_WORKERS = 6


@dataclass(frozen=True)
class PathSpec:
    name: str
    direct: bool  # the node's forwarded port; else the server's UDP relay


DIRECT = PathSpec("direct (node's forwarded UDP port)", direct=True)
UDP_RELAY = PathSpec("UDP relay (bosonserver, kernel forwarding)", direct=False)


@contextlib.contextmanager
def growth_lab(clients: int) -> Iterator[Lab]:
    """A built lab with ``clients`` client hosts and as many iperf3 servers (tracked by the
    lab: its teardown stops them); torn down on exit, leftovers raised."""
    lab = Lab(prefix="hg", plan=growth_plan(clients))
    try:
        lab.build()
        inet = lab.internet
        servers = [
            inet.popen(["iperf3", "-s", "-B", inet.ip, "-p", str(port)], name=f"iperf3-{port}")
            for port in range(IPERF_BASE, IPERF_BASE + clients)
        ]
        for port, proc in zip(range(IPERF_BASE, IPERF_BASE + clients), servers, strict=True):
            proc.wait_listening(port, timeout=30)
        yield lab
    finally:
        lab.teardown()
        left = lab.leftovers()
        if left:
            raise LabError(f"growth: lab {lab.names.stem} left behind {left}")


@contextlib.contextmanager
def serving(lab: Lab, path: PathSpec) -> Iterator[Product]:
    """bosonserver and higgsnode up for ``path``: the node port-forwarded on its home router
    (direct), or without a forward behind the server's UDP relay (punching off, so the
    clients stay on the relay). The node is stopped on exit; the lab stops the server."""
    product = Product(lab)
    # Fifty route calls from one public address within seconds: above the default bucket.
    env = {"BOSON_RATE_LIMIT_PER_S": "500", "BOSON_RATE_LIMIT_BURST": "1000"}
    if not path.direct:
        env["BOSON_PUNCH_ENABLED"] = "false"
    product.server.env = env
    args = [] if path.direct else ["--udp-relay-address", lab.server.ip]
    try:
        product.start_server(timeout=90, args=args)
        product.provision("client")
        product.start_node(direct=path.direct, config=NODE_CONFIG)
        product.wait_node_online(timeout=120)
    except Exception as exc:
        exc.add_note("process logs:\n" + lab.log_tails(40))
        raise
    try:
        yield product
    finally:
        for client in product.clients:
            with contextlib.suppress(Exception):
                client.down()
        with contextlib.suppress(Exception):
            product.stop_node()


def _connect(product: Product, host: Host, index: int, path: PathSpec) -> StockClient:
    token = product.token("client")
    keys = new_keypair()
    mode = "direct" if path.direct else "relay"
    deadline = time.monotonic() + 30
    while True:
        try:
            answer = product.route(host, token, keys.public, mode=mode)
            break
        except LabError as exc:
            # The node may not have announced its endpoint yet (direct mode).
            if time.monotonic() > deadline:
                raise LabError(f"no route for {host.role} within 30 s: {exc}") from exc
            time.sleep(0.5)
    endpoint = None
    if not path.direct:
        endpoint = (answer.get("udp_relay") or {}).get("endpoint")
        if not endpoint:
            raise LabError(f"the route answer has no udp_relay endpoint: {answer}")
    client = StockClient(product.lab, host, answer, keys, tag=f"g{index}", endpoint=endpoint)
    product.clients.append(client)
    client.up()
    client.wait_handshake(timeout=60)
    return client


def add_clients(product: Product, have: list[StockClient], n: int, path: PathSpec) -> None:
    """Bring ``have`` up to ``n`` clients (hosts ``client``, ``client2``, ...), a few at once."""
    todo = range(len(have) + 1, n + 1)
    with ThreadPoolExecutor(_BRINGUP_WORKERS) as pool:
        futures = [
            pool.submit(_connect, product, product.lab.host(client_role(i)), i, path) for i in todo
        ]
        have.extend(f.result() for f in futures)


class StartGate:
    """Starts N commands at the same instant: each waits in a shell reading its own FIFO
    (``read`` blocks without CPU) and ``release`` writes a line to every FIFO at once.
    Starting 50 ``ip netns exec iperf3`` one after the other took 3 s on the busy machine,
    more than half of a 5 s download; behind the gate only the exec itself is left."""

    def __init__(self, directory: Path, n: int) -> None:
        self.fifos = [directory / f"growth-gate-{i}" for i in range(n)]
        for fifo in self.fifos:
            fifo.unlink(missing_ok=True)
            os.mkfifo(fifo, 0o600)

    def argv(self, i: int, argv: Sequence[str]) -> list[str]:
        return ["sh", "-c", 'read _ < "$0"; exec "$@"', str(self.fifos[i]), *argv]

    def release(self, *, timeout: float = 60.0) -> None:
        """Once every shell has opened its FIFO (bounded by ``timeout``), write to all."""
        fds: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        try:
            while len(fds) < len(self.fifos):
                for i, fifo in enumerate(self.fifos):
                    if i not in fds:
                        # ENXIO: nobody reads it yet (its shell is still starting).
                        with contextlib.suppress(OSError):
                            fds[i] = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                if len(fds) < len(self.fifos) and time.monotonic() > deadline:
                    raise LabError(f"{len(self.fifos) - len(fds)} downloads not at the gate")
                time.sleep(0.02)
            for fd in fds.values():
                os.write(fd, b"go\n")
        finally:
            for fd in fds.values():
                os.close(fd)

    def close(self) -> None:
        for fifo in self.fifos:
            fifo.unlink(missing_ok=True)


def _download(
    host: Host, target: str, port: int, seconds: int, gate: StartGate, i: int
) -> tuple[float, float]:
    argv = [
        "iperf3", "-c", target, "-p", str(port), "-J", "-R", "-t", str(seconds),
        "--connect-timeout", "10000",
    ]  # fmt: skip
    out = host.run(gate.argv(i, argv), check=False, timeout=seconds + 90)
    if not out.stdout.strip():
        raise RuntimeError(f"iperf3 on {host.role} printed nothing: {out.stderr.strip()}")
    bps, nbytes, _ = parse_iperf(out.stdout)
    return bps, nbytes


@dataclass(frozen=True)
class Measured:
    point: Point
    # Between the first and the last download to finish: all are released by one StartGate
    # and each runs ``-t`` once its connections are up, so this is how late the last one got
    # going (SYNs and iperf3's control exchange queue behind the running downloads).
    finish_spread_s: float
    # UDP relay datagrams forwarded meanwhile, by path ("kernel", "userspace"), and the
    # sessions each path forwarded at the end (higgs_udp_relay_flows); empty direct.
    relayed: Mapping[str, float]
    flows: Mapping[str, float]


def parse_by_path(metrics: str, family: str) -> dict[str, float]:
    """``family{path=...}`` samples summed by ``path`` from a Prometheus text page (e.g.
    ``higgs_udp_relay_packets_total``, ``higgs_udp_relay_flows``)."""
    pattern = re.compile(
        rf'^{re.escape(family)}\{{[^}}]*path="(\w+)"[^}}]*\}}\s+(\S+)', re.MULTILINE
    )
    out: dict[str, float] = {}
    for m in pattern.finditer(metrics):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def _metrics(product: Product) -> str:
    argv = ["curl", "-sS", "--noproxy", "*", "--max-time", "10", f"{product.server_url}/metrics"]
    return product.lab.server.run(argv, timeout=15).stdout


def measure(
    product: Product, clients: Sequence[StockClient], seconds: int, *, relayed: bool
) -> Measured:
    """All ``clients`` download at once, one iperf3 server port each, for ``seconds``; CPU of
    the clients' namespaces (together), the node's and the server's over the whole window;
    with ``relayed``, the UDP relay's forwarded datagrams by path (kernel or userspace)."""
    lab = product.lab
    groups = {c.host.role: "client" for c in clients} | {"node": "node", "server": "server"}
    pids = pids_by_group(lab, groups)
    ends: list[float] = []
    lock = threading.Lock()
    assert lab.workdir is not None
    gate = StartGate(lab.workdir, len(clients))

    def one(i: int) -> tuple[float, float]:
        got = _download(clients[i].host, lab.internet.ip, IPERF_BASE + i, seconds, gate, i)
        with lock:
            ends.append(time.monotonic())
        return got

    packets = "higgs_udp_relay_packets_total"
    relay_before = parse_by_path(_metrics(product), packets) if relayed else {}
    # One thread per client: each only waits on its iperf3 (threads, not CPU). The CPU
    # window opens at the gate: the shells and iperf3s started after ``pids`` was taken, so
    # none of them is counted anyway.
    try:
        with ThreadPoolExecutor(len(clients)) as pool:
            futures = [pool.submit(one, i) for i in range(len(clients))]
            before = sample(pids)
            gate.release()
            results = [f.result() for f in futures]
    finally:
        gate.close()
    after = sample(pids)
    page = _metrics(product) if relayed else ""
    relay_after = parse_by_path(page, packets)
    flows = parse_by_path(page, "higgs_udp_relay_flows")
    cpu = {g: after[g].cpu_since(before[g]) for g in before}
    point = Point(
        n=len(clients),
        mbit=tuple(bps / 1e6 for bps, _ in results),
        nbytes=sum(b for _, b in results),
        cpu_s=cpu,
    )
    spread = max(ends) - min(ends) if ends else 0.0
    moved = {k: v - relay_before.get(k, 0.0) for k, v in relay_after.items()}
    progress(
        f"growth: {len(clients)} clients: {point.aggregate:.0f} Mbit/s, Jain {point.fairness:.3f}"
        f", finish spread {spread:.2f} s, relayed {moved}, flows {flows}"
        f", load {os.getloadavg()[0]:.1f}"
    )
    return Measured(point, spread, moved, flows)
