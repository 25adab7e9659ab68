"""The event loop every long-running program runs on: uvloop.

Why uvloop and not asyncio's default loop: the WebSocket bridges on the client and the
node move every relayed datagram through Python, and the loop's own per-callback cost
(selector, transports, handles) was about half of their CPU per GB. Measured A/B in one
run (docs/benchmarks.md, "WebSocket relay: where the time goes"): client CPU per GB
49 -> 28 s, node 53 -> 29 s, server 17 -> 6 s.

uvloop lacks ``loop.sock_sendto`` (NotImplementedError): code on this loop sends
datagrams on its non-blocking sockets with plain ``sock.sendto``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    """Runs ``coro`` to completion on a new uvloop event loop and returns its result."""
    import uvloop

    async def wrapper() -> T:
        return await coro

    return uvloop.run(wrapper())
