"""The reference server: FastAPI under the same uvicorn settings as bosonserver's API, with a
``POST /v1/routes`` that validates a body like the real one and answers a fixed route.

What it measures: the cost of the HTTP stack, routing and pydantic validation alone, on the
same core in the same round, so the real server's figure reads as "x times the floor".

    python -m bench.control.reference_app --port 18080
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvicorn
import uvloop
from fastapi import FastAPI
from pydantic import BaseModel

__all__ = ["create_app", "main"]

_ANSWER = {
    "session_id": "s_0123456789abcdef",
    "expires_at": "2026-01-01T00:00:00Z",
    "ttl_s": 600,
    "node": {"node_id": "n_0123456789abcdef", "country": "DE", "region": "Lab"},
    "wireguard": {
        "address": "10.77.0.5/32",
        "node_public_key": "x" * 44,
        "dns": ["10.77.0.1"],
        "mtu": 1380,
        "allowed_ips": ["0.0.0.0/0", "::/0"],
        "persistent_keepalive": 25,
    },
    "direct": {"endpoint": "127.0.0.2:51820"},
    "relay": {
        "url": "ws://127.0.0.1:8081/v1/relay/session",
        "token": "hgr_" + "x" * 40,
        "channel": 7,
    },
}


class _RouteRequest(BaseModel):
    client_public_key: str
    node_id: str | None = None
    country: str | None = None
    min_bandwidth_mbps: float | None = None
    mode: str = "auto"


class _HeartbeatRequest(BaseModel):
    cpu_percent: float | None = None
    memory_percent: float | None = None
    peers: int | None = None


def create_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/routes", status_code=201)
    async def routes(body: _RouteRequest) -> dict[str, object]:
        return _ANSWER

    @app.delete("/v1/sessions/{session_id}")
    async def close(session_id: str) -> dict[str, str]:
        return {"session_id": session_id, "state": "closed"}

    @app.post("/v1/nodes/{node_id}/heartbeat")
    async def heartbeat(node_id: str, body: _HeartbeatRequest) -> dict[str, object]:
        return {"heartbeat_interval_s": 15, "state": "online"}

    return app


async def _serve(port: int) -> None:
    config = uvicorn.Config(
        create_app(),
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
    )
    server = uvicorn.Server(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    await server.serve()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    uvloop.run(_serve(args.port))


if __name__ == "__main__":
    main()
