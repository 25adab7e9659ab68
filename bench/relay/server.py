"""The Higgs hub as a bench server: ``python -m bench.relay.server PORT SESSIONS PER_NODE``.

Tokens are derived from indices so the load generator knows them: node ``n`` has
``hgn_bench-node-{n}``, session ``j`` has ``hgr_bench-session-{j}`` and channel ``j + 1`` on node
``j // PER_NODE``. Prints ``READY <port>`` once listening.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import sys

import uvloop
from prometheus_client import CollectorRegistry

from higgs.common.secrets import hash_token
from higgs.server.relay.hub import NoHubEvents, RelayHubServer


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(port: int, sessions: int, per_node: int) -> None:
    hub = RelayHubServer(NoHubEvents(), CollectorRegistry())
    for j in range(sessions):
        n = j // per_node
        if j % per_node == 0:
            hub.allow_node(f"n_{n}", hash_token(f"hgn_bench-node-{n}"))
        hub.open_session(f"s_{j}", j + 1, f"n_{n}", hash_token(f"hgr_bench-session-{j}"))
    await hub.start("127.0.0.1", port)
    print(f"READY {hub.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    c = hub.counters
    drops = {k.value: v for k, v in c.drops.items() if v}
    print(f"COUNTERS drops={drops}", file=sys.stderr, flush=True)
    await hub.stop()


def main() -> None:
    raise_fd_limit()
    port, sessions, per_node = (int(a) for a in sys.argv[1:4])
    uvloop.run(serve(port, sessions, per_node))


if __name__ == "__main__":
    main()
