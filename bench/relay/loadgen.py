"""Load generator for the relay bench (one process, picows + uvloop): prints one JSON line.

``python -m bench.relay.loadgen MODE PORT SERVER_PID [options]``

- ``tput``: every session link sends DATA frames of one datagram as fast as TCP takes them
  (pre-built frames, one ``write()`` per 16 KiB block, paused at 64 KiB queued), client → node;
  node links count what arrives during the window.
- ``latency``: a paced total rate over the sessions; each datagram carries its send time and
  the node side measures send → receive (relay + two loopback hops + this process's loop).
- ``idle``: opens the links, sends one probe per session, waits until all probes arrived, then
  reads the server's RSS.

Tokens and channels follow bench/relay/server.py. Everything is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import resource
import struct
import time
from typing import Any

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

_CLK = os.sysconf("SC_CLK_TCK")


def server_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK


def server_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def relay_frame(channel: int, datagram: bytes) -> bytes:
    return struct.pack(">BIH", 1, channel, len(datagram)) + datagram


def masked_ws_frame(payload: bytes) -> bytes:
    """A client → server binary frame with an all-zero mask key (XOR with 0 is a no-op)."""
    n = len(payload)
    head = struct.pack(">BB", 0x82, 0x80 | n) if n < 126 else struct.pack(">BBH", 0x82, 0xFE, n)
    return head + b"\x00\x00\x00\x00" + payload


class Rx(WSListener):
    """A node link: counts (and optionally times) the frames it receives."""

    def __init__(self, timed: bool) -> None:
        self.frames = 0
        self.timed = timed
        self.latencies: list[int] = []
        self.record = False

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.BINARY:
            self.frames += 1
            if self.timed and self.record:
                sent = int.from_bytes(frame.get_payload_as_memoryview()[15:23], "big")
                self.latencies.append(time.monotonic_ns() - sent)


class CountingRx(asyncio.BufferedProtocol):
    """A node link that only counts bytes (tput mode): the handshake and the hello frame are
    parsed by hand, after that every read is one ``+=``, so the generator's receive side costs
    almost nothing per frame. All frames in tput mode have the same size, so bytes / frame size
    is the frame count."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.buf = bytearray(256 * 1024)
        self.view = memoryview(self.buf)
        self.head = bytearray()
        self.state = "handshake"
        self.bytes = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        request = (
            "GET /v1/relay/node HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {self.token}\r\n"
            "Higgs-Relay-Version: 1\r\n\r\n"
        )
        transport.write(request.encode())  # type: ignore[attr-defined]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        if self.state == "count":
            self.bytes += nbytes
            return
        self.head += self.view[:nbytes]
        if self.state == "handshake":
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            del self.head[: end + 4]
            self.state = "hello"
        if len(self.head) >= 2:  # the hello text frame (< 126 bytes of JSON)
            length = 2 + (self.head[1] & 0x7F)
            if len(self.head) >= length:
                self.bytes = len(self.head) - length
                self.state = "count"
                if not self.ready.done():
                    self.ready.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("node link closed"))


class Tx(WSListener):
    """A session link; in tput mode pumps a pre-built block of frames until paused."""

    def __init__(self) -> None:
        self.transport: WSTransport | None = None
        self.block = b""
        self.paused = False
        self.running = False
        self.scheduled = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        transport.underlying_transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        return None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._schedule()

    def start(self, block: bytes) -> None:
        self.block = block
        self.running = True
        self._schedule()

    def _schedule(self) -> None:
        if self.running and not self.scheduled and not self.paused:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        self.scheduled = False
        if not self.running or self.paused or self.transport is None:
            return
        self.transport.underlying_transport.write(self.block)
        self._schedule()


async def open_links(
    port: int,
    sessions: int,
    per_node: int,
    timed: bool,
    concurrency: int = 200,
    nodes: int | None = None,
) -> tuple[list[Rx], list[Tx]]:
    """Opens the node links (``nodes`` of them; by default enough for the sessions) and then
    the session links."""
    base = f"ws://127.0.0.1:{port}/v1/relay"
    if nodes is None:
        nodes = (sessions + per_node - 1) // per_node
    gate = asyncio.Semaphore(concurrency)

    async def connect(path: str, token: str, factory: Any, index: int) -> Any:
        headers = {"Authorization": f"Bearer {token}", "Higgs-Relay-Version": "1"}
        # Spread source addresses so 10k+ connections never run short of ephemeral ports.
        local = (f"127.0.{1 + index // 250 % 250}.{1 + index % 250}", 0)
        async with gate:
            _, listener = await ws_connect(
                factory,
                f"{base}/{path}",
                extra_headers=headers,
                read_buffer_init_size=int(os.environ.get("RBUF", "2048")),
                local_addr=local,
            )
        return listener

    rx = await asyncio.gather(
        *(connect("node", f"hgn_bench-node-{n}", lambda: Rx(timed), n) for n in range(nodes))
    )
    tx = await asyncio.gather(
        *(connect("session", f"hgr_bench-session-{j}", Tx, nodes + j) for j in range(sessions))
    )
    await asyncio.sleep(0.2)  # let the hub attach the last links
    return list(rx), list(tx)


async def run_tput(a: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    nodes = (a.sessions + a.per_node - 1) // a.per_node
    rx: list[CountingRx] = []
    for n in range(nodes):
        _, proto = await loop.create_connection(
            functools.partial(CountingRx, f"hgn_bench-node-{n}"), "127.0.0.1", a.port
        )
        await asyncio.wait_for(proto.ready, 10)
        rx.append(proto)
    _, tx = await open_links(a.port, a.sessions, a.per_node, timed=False, nodes=0)
    datagram = b"\x04" + bytes(a.size - 1)
    payload = 7 + a.size
    wire = payload + (2 if payload < 126 else 4)
    for j, link in enumerate(tx):
        one = masked_ws_frame(relay_frame(j + 1, datagram))
        link.start(one * max(1, 32_768 // len(one)))
    await asyncio.sleep(a.warmup)
    f0, c0, g0, t0 = sum(r.bytes for r in rx), server_cpu_s(a.pid), own_cpu_s(), time.monotonic()
    await asyncio.sleep(a.duration)
    f1, c1, g1, t1 = sum(r.bytes for r in rx), server_cpu_s(a.pid), own_cpu_s(), time.monotonic()
    f0, f1 = f0 // wire, f1 // wire
    for link in tx:
        link.running = False
    wall = t1 - t0
    return {
        "datagrams_per_s": (f1 - f0) / wall,
        "mbit_per_s": (f1 - f0) * a.size * 8 / wall / 1e6,
        "server_cpu_pct": 100 * (c1 - c0) / wall,
        "server_us_per_datagram": 1e6 * (c1 - c0) / max(1, f1 - f0),
        "gen_cpu_pct": 100 * (g1 - g0) / wall,
        "rss_mib": server_rss_mib(a.pid),
    }


async def run_latency(a: argparse.Namespace) -> dict[str, Any]:
    rx, tx = await open_links(a.port, a.sessions, a.per_node, timed=True)
    loop = asyncio.get_running_loop()
    padding = bytes(max(0, a.size - 16))
    tick_s = 0.001
    per_tick = a.rate * tick_s
    total = int(a.rate * (a.warmup + a.duration))
    sent = 0
    credit = 0.0
    start = loop.time()
    c0 = server_cpu_s(a.pid)
    recording = False
    next_tick = start
    while sent < total:
        now = loop.time()
        if not recording and now - start >= a.warmup:
            recording = True
            for r in rx:
                r.record = True
            c0 = server_cpu_s(a.pid)
            rec_start = now
        credit += per_tick
        while credit >= 1 and sent < total:
            credit -= 1
            j = sent % len(tx)
            link = tx[j].transport
            assert link is not None
            datagram = b"\x04" + bytes(7) + time.monotonic_ns().to_bytes(8, "big") + padding
            link.send(WSMsgType.BINARY, relay_frame(j + 1, datagram))
            sent += 1
        next_tick += tick_s
        await asyncio.sleep(max(0.0, next_tick - loop.time()))
    await asyncio.sleep(0.2)
    c1 = server_cpu_s(a.pid)
    wall = loop.time() - rec_start
    lat = sorted(x for r in rx for x in r.latencies)
    if not lat:
        return {"error": "no datagram arrived"}

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] / 1000

    return {
        "rate": a.rate,
        "delivered": len(lat),
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "server_cpu_pct": 100 * (c1 - c0) / wall,
    }


async def run_idle(a: argparse.Namespace) -> dict[str, Any]:
    base_rss = server_rss_mib(a.pid)
    t0 = time.monotonic()
    rx, tx = await open_links(a.port, a.sessions, a.per_node, timed=False)
    connect_s = time.monotonic() - t0
    for j, link in enumerate(tx):
        assert link.transport is not None
        link.transport.send(WSMsgType.BINARY, relay_frame(j + 1, b"\x04probe"))
    deadline = time.monotonic() + 30
    while sum(r.frames for r in rx) < a.sessions and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    rss = server_rss_mib(a.pid)
    return {
        "sessions": a.sessions,
        "node_links": len(rx),
        "connect_s": connect_s,
        "probes_ok": sum(r.frames for r in rx),
        "rss_base_mib": base_rss,
        "rss_mib": rss,
        "kib_per_session": (rss - base_rss) * 1024 / a.sessions,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["tput", "latency", "idle"])
    p.add_argument("port", type=int)
    p.add_argument("pid", type=int)
    p.add_argument("--sessions", type=int, default=1)
    p.add_argument("--per-node", type=int, default=10)
    p.add_argument("--size", type=int, default=1420)
    p.add_argument("--rate", type=float, default=5000)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=5.0)
    a = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    runner = {"tput": run_tput, "latency": run_latency, "idle": run_idle}[a.mode]
    result = uvloop.run(asyncio.wait_for(runner(a), a.warmup + a.duration + 120))
    print(json.dumps(result), flush=True)
    os._exit(0)  # skip closing thousands of links one by one


if __name__ == "__main__":
    main()
