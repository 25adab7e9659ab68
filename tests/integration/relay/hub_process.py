"""The relay hub in its own process, so an attack test can watch its RSS and see it survive.

Run as ``python -m tests.integration.relay.hub_process SPEC``; SPEC is JSON
``{"nodes": {node_id: token_hash}, "sessions": [[session_id, channel, node_id, token_hash]]}``.
It prints ``{"port": N}`` once listening; each line read from stdin is answered with one JSON
line holding the Prometheus exposition (``{"metrics": text}``); EOF on stdin stops it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from typing import Any

import uvloop
from prometheus_client import CollectorRegistry, generate_latest

from higgs.server.relay.hub import RelayHubServer


class _Events:
    """Counts what the services would be told; keeps nothing that grows with the traffic."""

    def __init__(self) -> None:
        self.node_messages = 0

    async def node_link_up(self, node_id: str) -> None:
        pass

    async def node_link_down(self, node_id: str) -> None:
        pass

    async def node_message(self, node_id: str, message: dict[str, Any]) -> None:
        self.node_messages += 1

    def session_activity(self, session_id: str) -> None:
        pass


async def _main(spec: dict[str, Any]) -> None:
    registry = CollectorRegistry()
    hub = RelayHubServer(_Events(), registry)
    await hub.start("127.0.0.1", 0, None)
    for node_id, token_hash in spec["nodes"].items():
        hub.allow_node(node_id, token_hash)
    for session_id, channel, node_id, token_hash in spec["sessions"]:
        hub.open_session(session_id, channel, node_id, token_hash)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def serve_stdin() -> None:
        # The collector reads plain ints, so a scrape from this thread is safe.
        for _ in sys.stdin:
            text = generate_latest(registry).decode()
            sys.stdout.write(json.dumps({"metrics": text}) + "\n")
            sys.stdout.flush()
        loop.call_soon_threadsafe(done.set)

    print(json.dumps({"port": hub.port}), flush=True)
    threading.Thread(target=serve_stdin, daemon=True).start()
    await done.wait()
    await hub.stop()


if __name__ == "__main__":
    uvloop.run(_main(json.loads(sys.argv[1])))
