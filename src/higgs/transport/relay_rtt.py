"""Times the relay RTT probe (docs/protocol.md §5.5) to each candidate relay host, for the
node's heartbeat and the client's route request. Best effort: a relay that does not answer
within the timeout is left out (the server then ranks it behind every measured one)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Iterable

from higgs.protocol.relay_probe import ping, pong_nonce

__all__ = ["PROBES", "TIMEOUT_S", "measure_all", "measure_one"]

PROBES = 3  # the minimum of a few: one lost or queued datagram does not decide the choice
TIMEOUT_S = 0.5


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: dict[bytes, asyncio.Future[float]] = {}

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        nonce = pong_nonce(data)
        fut = self.waiting.pop(nonce, None) if nonce is not None else None
        if fut is not None and not fut.done():
            fut.set_result(time.monotonic())


async def measure_one(
    host: str,
    port: int,
    *,
    probes: int = PROBES,
    timeout_s: float = TIMEOUT_S,
    fwmark: int | None = None,
) -> float | None:
    """The smallest RTT in milliseconds of ``probes`` pings, or None when none came back.
    ``fwmark``: SO_MARK of the socket, so that a client's kill switch and full tunnel let the
    probe go to the relay directly, as WireGuard's own packets do."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if fwmark:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, fwmark)
        sock.setblocking(False)
        sock.connect((host, port))
        transport, echo = await loop.create_datagram_endpoint(_Echo, sock=sock)
    except OSError:
        sock.close()
        return None
    best: float | None = None
    try:
        for _ in range(probes):
            nonce = os.urandom(8)
            fut: asyncio.Future[float] = loop.create_future()
            echo.waiting[nonce] = fut
            sent = time.monotonic()
            try:
                transport.sendto(ping(nonce))
                got = await asyncio.wait_for(fut, timeout_s)
            except (OSError, TimeoutError):
                echo.waiting.pop(nonce, None)
                continue
            rtt = (got - sent) * 1000.0
            best = rtt if best is None else min(best, rtt)
    finally:
        transport.close()
    return None if best is None else round(best, 3)


async def measure_all(
    targets: Iterable[tuple[str, int]],
    *,
    timeout_s: float = TIMEOUT_S,
    fwmark: int | None = None,
) -> dict[str, float]:
    """relay address → RTT in ms, for every target that answered (measured concurrently)."""
    listed = list(dict.fromkeys(targets))[:64]

    async def one(host: str, port: int) -> tuple[str, float | None]:
        with contextlib.suppress(Exception):
            return host, await measure_one(host, port, timeout_s=timeout_s, fwmark=fwmark)
        return host, None

    results = await asyncio.gather(*(one(h, p) for h, p in listed))
    return {host: rtt for host, rtt in results if rtt is not None}
