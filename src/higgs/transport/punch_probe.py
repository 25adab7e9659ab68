"""The probe exchange of hole punching, shared by node and client (docs/protocol.md §2.7).

From the agreed wall time ``at`` each end sends a probe (the reachability layout, with the
attempt's nonce) from its WireGuard port to the other end's public address every
``PROBE_EVERY_S``: its own outgoing probes open its NAT's filter toward the other end. An end
that hears the other's probe knows the path works in both directions (the other end's probes
got through its NAT, which only its own outgoing probes could have opened) and keeps sending
for ``AFTER_HEARD_S``, so the other end hears it too. All outside WireGuard, which keeps
using the relay until an end moves the peer's endpoint (make-before-break).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from higgs.osnet.probe_tap import ProbeTap
from higgs.protocol.reachability import encode_probe

__all__ = ["AFTER_HEARD_S", "PROBE_EVERY_S", "exchange"]

PROBE_EVERY_S = 0.1
AFTER_HEARD_S = 0.5


async def exchange(
    tap: ProbeTap, nonce: bytes, endpoint: str, delay_s: float, window_s: float
) -> bool:
    """True when the other end's probe with ``nonce`` arrived within the window, which opens
    ``delay_s`` from now (a delay, not a wall time: the two ends' clocks need not agree)."""
    loop = asyncio.get_running_loop()
    heard = asyncio.Event()

    def readable() -> None:
        if nonce in tap.read():
            heard.set()

    host, _, port_text = endpoint.rpartition(":")
    port = int(port_text)
    payload = encode_probe(nonce)
    loop.add_reader(tap.fileno(), readable)
    try:
        await asyncio.sleep(delay_s)
        deadline = time.monotonic() + window_s
        while time.monotonic() < deadline and not heard.is_set():
            tap.send(payload, host, port)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(heard.wait(), PROBE_EVERY_S)
        if not heard.is_set():
            return False
        for _ in range(round(AFTER_HEARD_S / PROBE_EVERY_S)):
            tap.send(payload, host, port)
            await asyncio.sleep(PROBE_EVERY_S)
        return True
    finally:
        loop.remove_reader(tap.fileno())
