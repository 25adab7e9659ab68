"""A minimal client-side relay bridge for e2e tests (the real one is higgsvpn's).

Run in the client's namespace:
``python -m tests.integration.node.relay_client URL TOKEN CHANNEL FWMARK``.
It prints the local UDP port WireGuard must use as its peer endpoint, then moves datagrams
between that socket and the session's relay link until killed. The relay connection carries
WireGuard's fwmark so that a full tunnel routes it around itself (as wg-quick does for
WireGuard's own packets).
"""

from __future__ import annotations

import asyncio
import sys

from higgs.transport.relay_link import RelayLink
from higgs.transport.udp_bridge import UdpBridge


async def main(url: str, token: str, channel: int, fwmark: int) -> None:
    bridge: UdpBridge | None = None

    def to_wireguard(ch: int, datagrams: list[memoryview]) -> None:
        if bridge is not None and ch == channel:
            bridge.send(datagrams)

    link = RelayLink(url, token, on_data=to_wireguard, fwmark=fwmark)
    bridge = await UdpBridge.open(lambda d: link.send_datagrams(channel, d))
    link.start()
    async with asyncio.timeout(20):
        await link.wait_connected()
    print(bridge.local_address[1], flush=True)
    closed = await link.wait_closed()
    print(f"relay link closed: {closed}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
