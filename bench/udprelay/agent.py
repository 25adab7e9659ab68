"""The processes of the UDP relay microbenchmark, each run inside one namespace of its lab:
``python -m bench.udprelay.agent ROLE ...`` prints one JSON line.

- ``flood`` sends a bounded flood of WireGuard-shaped data datagrams (type 4, the relay's hot
  path) from a fixed source port, pinned to one CPU; reports what it sent and its own CPU time
  (user + system: with tick accounting that includes the softirq work the kernel does in its
  context, i.e. veth, routing, conntrack and NAT of every datagram it sends).
- ``client-hello`` / ``node-hello`` play the two legs of one handshake (initiation, response
  with valid mac1 for the session's keys), so the product's binding binds for real.
- ``forwarder`` runs the product's userspace forwarder (kernel path off) pinned to one CPU;
  ``bare`` the reference: the shortest CPython receive-and-send loop, same pinning.
  Both read commands on stdin (``stats``, ``quit``).
- ``lease`` opens N relay ports in the product's forwarder and reports time and memory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import select
import socket
import sys
import threading
import time
from collections.abc import Sequence

__all__ = ["main"]

CLIENT_PUB = bytes(range(32))
NODE_PUB = bytes(range(32, 64))
CLIENT_INDEX = 0x0C11E47
NODE_INDEX = 0x0D0DE


def _mac1(recipient: bytes, body: bytes) -> bytes:
    key = hashlib.blake2s(b"mac1----" + recipient).digest()
    return hashlib.blake2s(body, digest_size=16, key=key).digest()


def initiation() -> bytes:
    body = b"\x01\0\0\0" + CLIENT_INDEX.to_bytes(4, "little") + bytes(108)
    return body + _mac1(NODE_PUB, body) + bytes(16)


def response() -> bytes:
    body = (
        b"\x02\0\0\0" + NODE_INDEX.to_bytes(4, "little") + CLIENT_INDEX.to_bytes(4, "little")
    ) + bytes(48)
    return body + _mac1(CLIENT_PUB, body) + bytes(16)


def data(size: int) -> bytes:
    head = b"\x04\0\0\0" + NODE_INDEX.to_bytes(4, "little") + bytes(8)
    return head + bytes(size - len(head))


def _emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _sock(bind: tuple[str, int]) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.bind(bind)
    return s


def flood(src: str, sport: int, dst: str, dport: int, count: int, seconds: float, size: int,
          cpu: int) -> None:  # fmt: skip
    os.sched_setaffinity(0, {cpu})
    s = _sock((src, sport))
    s.connect((dst, dport))
    payload = data(size)
    send = s.send
    sent = errors = 0
    c0, t0 = _cpu(), time.monotonic()
    deadline = t0 + seconds
    while sent < count:
        for _ in range(256):  # the clock read off the per-datagram path
            try:
                send(payload)
                sent += 1
            except OSError:  # ENOBUFS / ECONNREFUSED from an ICMP: counted, not fatal
                errors += 1
        if time.monotonic() >= deadline:
            break
    wall, cpu_s = time.monotonic() - t0, _cpu() - c0
    _emit({"sent": sent, "errors": errors, "cpu_s": cpu_s, "wall_s": wall})


def client_hello(src: str, sport: int, relay: str, port: int, seconds: float) -> None:
    s = _sock((src, sport))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s.sendto(initiation(), (relay, port))
        _emit({"sent": "initiation"})
        ready, _, _ = select.select([s], [], [], 0.5)
        if ready:
            got, _ = s.recvfrom(2048)
            if got[:1] == b"\x02":
                _emit({"bound": True})
                return
    _emit({"bound": False})


def node_hello(src: str, sport: int, relay: str, port: int) -> None:
    s = _sock((src, sport))
    for _ in range(3):  # the first one binds; the others are dropped as unconfirmed
        s.sendto(response(), (relay, port))
        time.sleep(0.05)
    _emit({"sent": "response"})


def forwarder(relay: str, port: int, cpu: int) -> None:
    from higgs.relay.forwarder import Forwarder, SessionSpec
    from higgs.relay.metrics import RelayStats

    os.sched_setaffinity(0, {cpu})
    stats = RelayStats(ports_total=1)
    fwd = Forwarder(relay, stats, kernel=None)
    fwd.start()
    fwd.add(SessionSpec("bench", port, CLIENT_PUB, NODE_PUB))

    clock = time.pthread_getcpuclockid(fwd._thread.ident or 0)  # the forwarder's own thread
    _emit({"ready": True})
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        _emit({
            "packets": stats.user_packets,
            "binds": stats.binds,
            "cpu_s": time.clock_gettime(clock),
            "at": time.monotonic(),
        })  # fmt: skip
    fwd.stop()


def bare(relay: str, port: int, to: str, to_port: int, cpu: int) -> None:
    """The reference: the cheapest CPython forwarding loop (no binding, no state)."""
    os.sched_setaffinity(0, {cpu})
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((relay, port))
    s.setblocking(False)
    counter = [0]
    stop = threading.Event()

    def loop() -> None:
        buf = bytearray(65535)
        view = memoryview(buf)
        recv_into, sendto, dest = s.recvfrom_into, s.sendto, (to, to_port)
        n = 0
        while not stop.is_set():
            select.select([s], [], [], 0.25)
            for _ in range(64):
                try:
                    size, _src = recv_into(buf)
                except BlockingIOError:
                    break
                sendto(view[:size], dest)
                n += 1
            counter[0] = n

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    clock = time.pthread_getcpuclockid(t.ident or 0)
    _emit({"ready": True})
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        _emit({"packets": counter[0], "cpu_s": time.clock_gettime(clock), "at": time.monotonic()})
    stop.set()
    t.join(timeout=2)


def lease(relay: str, first: int, count: int) -> None:
    from higgs.relay.forwarder import Forwarder, SessionSpec
    from higgs.relay.metrics import RelayStats

    statm = os.open("/proc/self/statm", os.O_RDONLY)  # opened now: later there may be no fd left
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        return int(os.pread(statm, 200, 0).split()[1]) * page

    # One socket per leased port: stay clear of the descriptor limit, which the interpreter
    # itself needs headroom under (a thread start opens libgcc_s).
    room = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 64
    fwd = Forwarder(relay, RelayStats(ports_total=count), kernel=None)
    fwd.start()
    r0, t0 = rss(), time.monotonic()
    opened = 0
    error = ""
    try:
        for i in range(min(count, room)):
            fwd.add(SessionSpec(f"s{i}", first + i, CLIENT_PUB, NODE_PUB))
            opened += 1
    except OSError as exc:
        error = str(exc)
    if not error and opened < count:
        error = f"RLIMIT_NOFILE {room + 64:,} (64 descriptors kept for the interpreter)"
    took = time.monotonic() - t0
    _emit({"opened": opened, "seconds": took, "rss_bytes": rss() - r0, "error": error})
    # Held until told: the driver checks that traffic on a sample of the ports still passes.
    sys.stdin.readline()
    t1 = time.monotonic()
    fwd.stop()
    _emit({"stop_seconds": time.monotonic() - t1})


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.udprelay.agent")
    sub = p.add_subparsers(dest="role", required=True)
    f = sub.add_parser("flood")
    for name in ("src", "dst"):
        f.add_argument(name)
    f.add_argument("--sport", type=int, required=True)
    f.add_argument("--dport", type=int, required=True)
    f.add_argument("--count", type=int, required=True)
    f.add_argument("--seconds", type=float, required=True)
    f.add_argument("--size", type=int, default=1420)
    f.add_argument("--cpu", type=int, default=0)
    for role in ("client-hello", "node-hello"):
        h = sub.add_parser(role)
        h.add_argument("src")
        h.add_argument("sport", type=int)
        h.add_argument("relay")
        h.add_argument("port", type=int)
    w = sub.add_parser("forwarder")
    w.add_argument("relay")
    w.add_argument("port", type=int)
    w.add_argument("--cpu", type=int, default=1)
    b = sub.add_parser("bare")
    b.add_argument("relay")
    b.add_argument("port", type=int)
    b.add_argument("to")
    b.add_argument("to_port", type=int)
    b.add_argument("--cpu", type=int, default=1)
    ls = sub.add_parser("lease")
    ls.add_argument("relay")
    ls.add_argument("first", type=int)
    ls.add_argument("count", type=int)
    a = p.parse_args(argv)
    if a.role == "flood":
        flood(a.src, a.sport, a.dst, a.dport, a.count, a.seconds, a.size, a.cpu)
    elif a.role == "client-hello":
        client_hello(a.src, a.sport, a.relay, a.port, 5.0)
    elif a.role == "node-hello":
        node_hello(a.src, a.sport, a.relay, a.port)
    elif a.role == "forwarder":
        forwarder(a.relay, a.port, a.cpu)
    elif a.role == "bare":
        bare(a.relay, a.port, a.to, a.to_port, a.cpu)
    else:
        lease(a.relay, a.first, a.count)


if __name__ == "__main__":
    main()
