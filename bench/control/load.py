"""The load: simulated nodes (register, then heartbeat at a steady rate) and route requests.

Everything is plain HTTP from this one process (aiohttp, one event loop; httpx measured
about 10 ms per request on this machine, so it would have measured itself); the simulated nodes
run no WireGuard. Every loop is bounded in count and in time.

A "session" of the load is one simulated client in a closed loop: ``POST /v1/routes`` with
its own WireGuard key, then ``DELETE /v1/sessions/{id}``, so at most S sessions are open at a
time and the route figure is the cost of opening one against N registered nodes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

from bench.harness import Budget, percentile, progress
from higgs.common.keys import PrivateKey
from higgs.protocol import keyproof

__all__ = [
    "Clients",
    "NodeSim",
    "WindowResult",
    "heartbeat_body",
    "register_nodes",
    "route_window",
]

# One server, or several instances of one deployment: the load is dealt to them in turn, as a
# round-robin balancer would (client i and node j to instance i mod k, j mod k).
Clients = aiohttp.ClientSession | Sequence[aiohttp.ClientSession]


def _as_list(clients: Clients) -> list[aiohttp.ClientSession]:
    return [clients] if isinstance(clients, aiohttp.ClientSession) else list(clients)


_REGISTER_TRIES = 4


@dataclass
class NodeSim:
    node_id: str
    token: str


def _node_body(i: int, key: PrivateKey) -> dict[str, object]:
    return {
        "public_key": key.public_b64(),
        "listen_port": 51820,
        # Loopback: the server stores the endpoint and hands it out; nothing is sent to it.
        "endpoint": f"127.0.{(i >> 8) & 255}.{(i & 255) or 1}:51820" if i % 2 == 0 else None,
        "tunnel_subnet": f"10.{100 + (i >> 8) % 100}.{i & 255}.0/24",
        "max_clients": 64,
        "bandwidth_mbps": 100.0,
        "country": random.choice(["DE", "FR", "NL", "US"]),
        "region": "bench",
        "version": "bench",
    }


def heartbeat_body() -> dict[str, object]:
    return {
        "cpu_percent": round(random.uniform(1, 50), 1),
        "memory_percent": round(random.uniform(10, 60), 1),
        "peers": random.randint(0, 10),
        "rx_bytes": random.randint(0, 10**9),
        "tx_bytes": random.randint(0, 10**9),
        "latency_ms": round(random.uniform(5, 80), 1),
    }


async def register_nodes(
    client: aiohttp.ClientSession, enroll_key: str, n: int, *, concurrency: int = 16, seconds: float
) -> tuple[list[NodeSim], float, Counter[int]]:
    """Register ``n`` nodes with ``concurrency`` requests in flight; (nodes, seconds, errors)."""
    nodes: list[NodeSim] = []
    errors: Counter[int] = Counter()
    errors_seen: dict[int, str] = {}
    budget = Budget(count=n, seconds=seconds)
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while not budget.expired(next_i):
            i = next_i
            next_i += 1
            key = PrivateKey.generate()
            body = _node_body(i, key)
            # A node retries a refused registration (as higgsnode does, with backoff); the
            # refusals are counted and reported.
            for attempt in range(_REGISTER_TRIES):
                # Like higgsnode: a fresh challenge, answered with the node's key.
                async with client.post(
                    "/v1/nodes/challenge", headers={"Authorization": f"Bearer {enroll_key}"}
                ) as r:
                    challenge = await r.json() if r.status == 200 else None
                if challenge is not None:
                    body["proof"] = {
                        "nonce": challenge["nonce"],
                        "mac": keyproof.node_proof(
                            key.raw, challenge["server_key"], challenge["nonce"]
                        ),
                    }
                async with client.post(
                    "/v1/nodes/register",
                    json=body,
                    headers={"Authorization": f"Bearer {enroll_key}"},
                ) as r:
                    if r.status in (200, 201):
                        answer = await r.json()
                        nodes.append(NodeSim(answer["node_id"], answer["node_token"]))
                        break
                    text = (await r.read()).decode(errors="replace")
                    errors[r.status] += 1
                    if r.status not in errors_seen:
                        errors_seen[r.status] = text[:300]
                        progress(f"control: registration answered {r.status}: {text[:300]}")
                if r.status < 500:
                    break
                await asyncio.sleep(0.2 * (attempt + 1))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    return nodes, time.perf_counter() - t0, errors


@dataclass
class WindowResult:
    seconds: float
    route_latencies: list[float] = field(default_factory=list)
    close_latencies: list[float] = field(default_factory=list)
    heartbeat_latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def metrics(self) -> dict[str, float]:
        ms = 1000.0
        return {
            "route_rps": len(self.route_latencies) / self.seconds,
            "route_p50": percentile(self.route_latencies, 50) * ms,
            "route_p99": percentile(self.route_latencies, 99) * ms,
            "close_p99": percentile(self.close_latencies, 99) * ms,
            "hb_rate": len(self.heartbeat_latencies) / self.seconds,
            "hb_p99": percentile(self.heartbeat_latencies, 99) * ms,
            "errors": float(sum(self.errors.values())),
        }


async def _heartbeats(
    clients: list[aiohttp.ClientSession],
    nodes: list[NodeSim],
    interval: float,
    deadline: float,
    out: WindowResult,
    measuring: asyncio.Event,
) -> None:
    """Each node once per ``interval``, spread evenly: N / interval heartbeats per second."""
    if not nodes:
        return
    gap = interval / len(nodes)
    inflight = asyncio.Semaphore(64)
    tasks: set[asyncio.Task[None]] = set()

    async def one(node: NodeSim, client: aiohttp.ClientSession) -> None:
        async with inflight:
            t = time.perf_counter()
            try:
                async with client.post(
                    f"/v1/nodes/{node.node_id}/heartbeat",
                    json=heartbeat_body(),
                    headers={"Authorization": f"Bearer {node.token}"},
                ) as r:
                    await r.read()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
                out.errors[f"heartbeat {type(exc).__name__}"] += 1
                return
            if not measuring.is_set():
                return
            if status == 200:
                out.heartbeat_latencies.append(time.perf_counter() - t)
            else:
                out.errors[f"heartbeat {status}"] += 1

    start = time.perf_counter()
    i = random.randrange(len(nodes))
    k = 0
    while True:
        due = start + k * gap
        now = time.perf_counter()
        if due >= deadline:
            break
        if due > now:
            await asyncio.sleep(due - now)
        j = i % len(nodes)
        task = asyncio.create_task(one(nodes[j], clients[j % len(clients)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
        k += 1
    if tasks:
        # Heartbeats still queued behind the in-flight limit at the deadline are the server's
        # backlog: give them a moment, then cancel them (counted) before the session closes.
        _, pending = await asyncio.wait(tasks, timeout=5)
        for task in pending:
            task.cancel()
        if pending:
            out.errors["heartbeat backlog cancelled"] += len(pending)
            await asyncio.gather(*pending, return_exceptions=True)


async def _route_worker(
    client: aiohttp.ClientSession,
    token: str,
    key: str,
    deadline: float,
    max_requests: int,
    out: WindowResult,
    measuring: asyncio.Event,
    close: bool,
) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    done = 0
    while time.perf_counter() < deadline and done < max_requests:
        done += 1
        t = time.perf_counter()
        try:
            async with client.post(
                "/v1/routes", json={"client_public_key": key}, headers=auth
            ) as r:
                status = r.status
                body = await r.json() if status == 201 else await r.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            out.errors[f"route {type(exc).__name__}"] += 1
            await asyncio.sleep(0.01)
            continue
        took = time.perf_counter() - t
        if status != 201 or not isinstance(body, dict):
            if measuring.is_set():
                out.errors[f"route {status}"] += 1
            await asyncio.sleep(0.01)  # no hot loop on a refusing server
            continue
        if measuring.is_set() and time.perf_counter() < deadline:
            out.route_latencies.append(took)
        if close:
            t = time.perf_counter()
            try:
                async with client.delete(f"/v1/sessions/{body['session_id']}", headers=auth) as c:
                    await c.read()
                    cstatus = c.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                out.errors[f"close {type(exc).__name__}"] += 1
                continue
            if measuring.is_set() and cstatus == 200:
                out.close_latencies.append(time.perf_counter() - t)
            elif cstatus != 200 and measuring.is_set():
                out.errors[f"close {cstatus}"] += 1


async def route_window(
    clients: Clients,
    *,
    client_token: str,
    sessions: int,
    nodes: list[NodeSim],
    heartbeat_interval: float,
    warmup: float,
    seconds: float,
    max_requests: int,
    close: bool = True,
) -> WindowResult:
    """``sessions`` clients in closed loops while every node heartbeats; counts only after
    ``warmup``. Bounded by ``warmup + seconds`` and ``max_requests`` per client."""
    out = WindowResult(seconds=seconds)
    measuring = asyncio.Event()
    start = time.perf_counter()
    deadline = start + warmup + seconds
    keys = [PrivateKey.generate().public_b64() for _ in range(sessions)]
    to = _as_list(clients)
    tasks = [
        asyncio.create_task(
            _route_worker(
                to[i % len(to)], client_token, key, deadline, max_requests, out, measuring, close
            )
        )
        for i, key in enumerate(keys)
    ]
    tasks.append(
        asyncio.create_task(_heartbeats(to, nodes, heartbeat_interval, deadline, out, measuring))
    )
    await asyncio.sleep(warmup)
    measuring.set()
    t_measure = time.perf_counter()
    _, pending = await asyncio.wait(tasks, timeout=warmup + seconds + 30)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    out.seconds = max(1e-6, min(time.perf_counter(), deadline) - t_measure)
    return out
