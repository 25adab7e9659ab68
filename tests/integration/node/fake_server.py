"""A small real HTTP server on loopback speaking the node half of docs/protocol.md §2.

Used until the real bosonserver app can be started in-process; it answers like the server does
(status codes, error bodies) and records what the node sent.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

__all__ = ["NodeApiServer", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class NodeApiServer:
    enroll_key: str = "hge_" + "k" * 20
    interval: int = 1
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    nodes: dict[str, str] = field(default_factory=dict)  # node_id -> token
    registrations: list[str] = field(default_factory=list)  # the credential kind used each time
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def forget_all(self) -> None:
        self.nodes.clear()

    def _app(self) -> FastAPI:
        app = FastAPI()

        def err(status: int, code: str, message: str) -> JSONResponse:
            return JSONResponse({"error": code, "message": message}, status_code=status)

        def bearer(request: Request) -> str:
            return request.headers.get("authorization", "").removeprefix("Bearer ")

        @app.get("/healthz")
        async def healthz() -> Response:
            return JSONResponse({"status": "ok"})

        @app.post("/v1/nodes/register")
        async def register(request: Request) -> Response:
            token = bearer(request)
            body = await request.json()
            if not isinstance(body.get("public_key"), str):
                return err(422, "invalid", "field 'public_key': required")
            node_id = next((n for n, t in self.nodes.items() if t == token), None)
            if node_id is not None:
                self.registrations.append("node token")
                status = 200
            elif token == self.enroll_key:
                self.registrations.append("enrollment key")
                node_id = "n_" + secrets.token_hex(8)
                status = 201
            else:
                self.registrations.append("rejected")
                return err(401, "invalid_token", "the enrollment key is not valid")
            self.nodes[node_id] = "hgn_" + secrets.token_urlsafe(16)
            return JSONResponse(
                {
                    "node_id": node_id,
                    "node_token": self.nodes[node_id],
                    "heartbeat_interval_s": self.interval,
                    "relay_url": f"ws://{self.host}:1/v1/relay/node",
                    "tunnel_address": "10.77.0.1/24",
                },
                status_code=status,
            )

        @app.post("/v1/nodes/{node_id}/heartbeat")
        async def heartbeat(node_id: str, request: Request) -> Response:
            if self.nodes.get(node_id) != bearer(request):
                return err(401, "invalid_token", "unknown node token")
            self.heartbeats.append(await request.json())
            return JSONResponse({"heartbeat_interval_s": self.interval, "state": "online"})

        @app.delete("/v1/nodes/{node_id}")
        async def delete(node_id: str, request: Request) -> Response:
            if self.nodes.get(node_id) != bearer(request):
                return err(401, "invalid_token", "unknown node token")
            self.deleted.append(node_id)
            return Response(status_code=204)

        return app

    async def start(self) -> None:
        config = uvicorn.Config(
            self._app(), host=self.host, port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        for _ in range(200):
            if self._server.started:
                return
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.02)
        raise RuntimeError("test server did not start")

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.wait_for(self._task, 10)
            self._server = None


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="node-facing API test server")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--enroll-key", required=True)
    parser.add_argument("--interval", type=int, default=2)
    args = parser.parse_args()
    srv = NodeApiServer(
        enroll_key=args.enroll_key, interval=args.interval, host=args.host, port=args.port
    )

    async def run() -> None:
        await srv.start()
        assert srv._task is not None
        await srv._task

    asyncio.run(run())


if __name__ == "__main__":
    _main()
