"""The node's data links to relay hosts' WebSocket hubs (docs/scaleout.md "Relay hosts").

The server names, per relayed session, the hub that carries its WebSocket data
(``relay_hub`` in ``peer_add``/``sync``, docs/protocol.md §3.3); absent, the node's control
link carries it as before. Each named hub gets one ``/v1/relay/node`` link with the node's
token, shared by every session routed there and closed when the last of them goes. The hub
reads its admissions from the database, so a 401 right after the session opened is retried
(``ADMISSION_WAIT_S``); a link that stopped for good while sessions still want it is dialled
again at the next ``peer_add`` or ``sync`` that names its hub.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from higgs.transport.relay_link import DataCallback, RelayLink

__all__ = ["ADMISSION_WAIT_S", "NODE_PATH", "HubLinks"]

NODE_PATH = "/v1/relay/node"
# Longer than a relay host's admission read (0.9 s) plus a loaded database's answer.
ADMISSION_WAIT_S = 10.0


class HubLinks:
    def __init__(self, token: str, *, on_data: DataCallback) -> None:
        self._token = token
        self._on_data = on_data
        self._links: dict[str, RelayLink] = {}  # hub base URL → its link
        self._hub_of: dict[int, str] = {}  # channel → hub base URL
        self._closing: set[asyncio.Task[None]] = set()

    def route(self, channel: int, hub: str | None) -> None:
        """``channel``'s data goes over ``hub``'s link (None: the control link)."""
        old = self._hub_of.pop(channel, None)
        if hub is not None:
            self._hub_of[channel] = hub
            link = self._links.get(hub)
            if link is None or link.result is not None:  # none yet, or it stopped for good
                link = self._links[hub] = RelayLink(
                    hub + NODE_PATH,
                    self._token,
                    on_data=self._on_data,
                    admission_wait_s=ADMISSION_WAIT_S,
                )
                link.start()
        if old is not None and old != hub and old not in self._hub_of.values():
            self._drop(old)

    def link_for(self, channel: int) -> RelayLink | None:
        hub = self._hub_of.get(channel)
        return None if hub is None else self._links.get(hub)

    def status(self) -> dict[str, Any]:
        return {
            hub: {
                "connected": link.connected,
                "sessions": sum(1 for h in self._hub_of.values() if h == hub),
            }
            for hub, link in self._links.items()
        }

    def _drop(self, hub: str) -> None:
        link = self._links.pop(hub, None)
        if link is not None:
            task = asyncio.get_running_loop().create_task(link.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for hub in list(self._links):
            self._drop(hub)
        self._hub_of.clear()
        for task in list(self._closing):
            with contextlib.suppress(asyncio.CancelledError):
                await task
