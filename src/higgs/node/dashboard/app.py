"""The owner's page: who uses my connection, how much, what protects me, pause/resume.

Served on a loopback address only (settings.dashboard.listen). Login with the token from
``dashboard.token`` in the state directory (``higgsnode dashboard`` prints where); the
session cookie, CSRF token, same-origin check and headers are common/websession.py's. Clients
are anonymised: a number per peer, never a key or an address. ``/metrics`` (no login, like any
exporter on localhost) is the Prometheus exporter.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Form, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from higgs.common import webui
from higgs.common.websession import (
    SECURITY_HEADERS,
    FileWebSessions,
    WebSession,
    cookie_header,
    same_origin,
)
from higgs.node.dashboard.exporter import node_registry
from higgs.node.dashboard.source import OwnerSource
from higgs.node.ownerstate import (
    DASHBOARD_SESSIONS_FILE,
    dashboard_token,
    is_paused,
    load_diagnose,
)

__all__ = ["create_app", "owner_data", "serve_dashboard"]

log = logging.getLogger(__name__)

COOKIE = "higgs_owner"
STREAM_S = 300.0
_MB = 1_000_000

_env = webui.environment("higgs.node.dashboard")


class _Rate:
    """Bandwidth now, from successive byte totals of the current peers."""

    def __init__(self) -> None:
        self._last: tuple[float, int] | None = None
        self.bps = 0.0

    def update(self, now: float, total: int) -> float:
        if self._last is not None and now - self._last[0] >= 0.5:
            span = now - self._last[0]
            self.bps = max(0, total - self._last[1]) / span
            self._last = (now, total)
        elif self._last is None:
            self._last = (now, total)
        return self.bps


def _mb(n: float) -> str:
    return f"{n / _MB:.1f} MB"


def _mapping_text(status: Any) -> str:
    """The port mapper's status (node/portmap.py) in a line; empty when it is off."""
    if not isinstance(status, dict) or status.get("setting") in (None, "off"):
        return ""
    if status.get("method"):
        verified = "verified from outside" if status.get("verified") else "not verified yet"
        return f"{status['method']}: {status.get('external_endpoint')} ({verified})"
    failures = "; ".join(
        f"{a.get('method')}: {a.get('reason')}" for a in status.get("attempts") or []
    )
    return f"no mapping ({status.get('state')}){': ' + failures if failures else ''}"


def owner_data(source: OwnerSource, rate: _Rate) -> dict[str, Any]:
    s = source.settings
    status = source.status()
    peers = status.get("peers") or []
    total = sum(int(p.get("rx_bytes", 0)) + int(p.get("tx_bytes", 0)) for p in peers)
    bps = rate.update(time.monotonic(), total)
    clients = [
        [
            f"client {i}",
            _mb(int(p.get("rx_bytes", 0))),
            _mb(int(p.get("tx_bytes", 0))),
            "never" if p.get("last_handshake_s") is None else f"{p['last_handshake_s']:.0f} s ago",
        ]
        for i, p in enumerate(peers, 1)
    ]
    budget = source.budget
    month = f"{_mb(budget.used_bytes)} of " + (
        f"{_mb(budget.cap_bytes)} cap" if budget.cap_bytes else "no cap"
    )
    p = s.protection
    protections = [
        ["owner's LAN and private ranges", "blocked for clients"],
        ["allowed exceptions", ", ".join(str(n) for n in p.allow) or "none"],
        ["blocked TCP ports", ", ".join(map(str, p.blocked_tcp_ports)) or "none"],
        ["blocked UDP ports", ", ".join(map(str, p.blocked_udp_ports)) or "none"],
        ["connections per client", str(s.limits.connections_per_client or "unlimited")],
        ["new connections per second", str(s.limits.new_connections_per_s or "unlimited")],
        ["shaping down / up (Mbit/s)",
         f"{s.shaping.total_down_mbit or 'off'} / {s.shaping.total_up_mbit or 'off'}"],
        ["per client (Mbit/s)", str(s.shaping.per_client_mbit or "off")],
    ]  # fmt: skip
    manual = f" (endpoint announced by hand: {s.endpoint})" if s.endpoint else ""
    mapping_text = _mapping_text(status.get("port_mapping")) or "not configured" + manual
    diag = load_diagnose(s.state_dir)
    problems: list[list[str | dict[str, str]]] = []
    if diag is None:
        diag_text = "no run yet: `higgsnode diagnose` leaves its findings here"
    else:
        failed = [c for c in diag.get("checks", []) if not c.get("ok")]
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(diag.get("at", 0))))
        diag_text = f"last run {when}: {len(failed)} problem(s)"
        problems = [
            [str(c.get("name", "")), str(c.get("detail", "")), str(c.get("fix", ""))]
            for c in failed
        ]
    paused = is_paused(s.state_dir)
    server = status.get("server") or {}
    return {
        "fields": {
            "state": "paused: no new sessions (open ones drain)" if paused else "taking sessions",
            "now": f"{bps * 8 / 1e6:.2f} Mbit/s",
            "month": month,
            "mapping": mapping_text,
            "diagnose": diag_text,
            "server": str(server.get("state", "unknown")),
        },
        "stats": {"summary": f"{len(clients)} client(s) using this connection now"},
        "tables": {
            "clients": {"columns": ["client", "from client", "to client", "handshake"],
                        "rows": clients},
            "protections": {"columns": ["protection", "setting"], "rows": protections},
            "problems": {"columns": ["check", "problem", "fix"], "rows": problems},
        },
        "paused": paused,
    }  # fmt: skip


def create_app(source: OwnerSource) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    state_dir = source.settings.state_dir
    # In the state directory, so that restarting the agent does not log the owner out.
    sessions = FileWebSessions(state_dir / DASHBOARD_SESSIONS_FILE, b"higgs owner csrf")
    rate = _Rate()
    registry = node_registry(source)
    attempts: dict[str, float] = {}

    def headers(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        return response

    def render(name: str, status: int = 200, **values: Any) -> Response:
        return headers(HTMLResponse(_env.get_template(name).render(**values), status_code=status))

    def session(request: Request) -> WebSession | None:
        return sessions.get(request.cookies.get(COOKIE))

    def origin_ok(request: Request) -> bool:
        h = request.headers
        return same_origin(h.get("host"), h.get("origin"), h.get("referer"))

    @app.get("/login")
    async def login_form() -> Response:
        return render("login.html", error="", path=str(state_dir / "dashboard.token"))

    @app.post("/login")
    async def login(request: Request, token: Annotated[str, Form(max_length=200)] = "") -> Response:
        path = str(state_dir / "dashboard.token")
        if not origin_ok(request):
            return render("login.html", 403, error="refused: cross-site form", path=path)
        # One try per second: the token has 256 bits, this only keeps logs and CPU quiet.
        now = time.monotonic()
        if now - attempts.get("last", 0.0) < 1.0:
            return render("login.html", 429, error="one try per second", path=path)
        attempts["last"] = now
        if not hmac.compare_digest(token.strip(), dashboard_token(state_dir)):
            return render("login.html", 401, error="that is not the dashboard token", path=path)
        sid, _ = sessions.create()
        response = headers(RedirectResponse("/", status_code=303))
        response.headers["Set-Cookie"] = cookie_header(
            COOKIE, sid, path="/", secure=False, max_age=int(sessions.ttl_s)
        )
        return response

    @app.get("/")
    async def page(request: Request) -> Response:
        current = session(request)
        if current is None:
            return headers(RedirectResponse("/login", status_code=303))
        data = await asyncio.to_thread(owner_data, source, rate)
        return render("owner.html", data=data, csrf=current.csrf, page="owner")

    @app.post("/pause")
    async def pause(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
        return await switch(request, csrf, True)

    @app.post("/resume")
    async def resume(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
        return await switch(request, csrf, False)

    async def switch(request: Request, csrf: str, paused: bool) -> Response:
        current = session(request)
        if current is None:
            return headers(RedirectResponse("/login", status_code=303))
        if not origin_ok(request) or not sessions.check_csrf(current, csrf):
            return render("login.html", 403, error="refused: stale or cross-site form", path="")
        source.set_paused(paused)
        log.info("owner switched the node", extra={"paused": paused})
        return headers(RedirectResponse("/", status_code=303))

    @app.post("/logout")
    async def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
        """Ends this browser's session (on a shared PC); the cookie is cleared as well."""
        current = session(request)
        if current is None:
            return headers(RedirectResponse("/login", status_code=303))
        if not origin_ok(request) or not sessions.check_csrf(current, csrf):
            return render("login.html", 403, error="refused: stale or cross-site form", path="")
        sessions.drop(request.cookies.get(COOKIE))
        response = headers(RedirectResponse("/login", status_code=303))
        response.headers["Set-Cookie"] = cookie_header(
            COOKIE, "", path="/", secure=False, max_age=0
        )
        return response

    @app.get("/events/owner")
    async def events(request: Request) -> Response:
        if session(request) is None:
            return headers(Response("log in first", status_code=401, media_type="text/plain"))

        async def stream() -> AsyncIterator[str]:
            loop = asyncio.get_running_loop()
            end = loop.time() + STREAM_S
            yield "retry: 2000\n\n"
            while loop.time() < end and session(request) is not None:
                if await request.is_disconnected():
                    return
                data = await asyncio.to_thread(owner_data, source, rate)
                yield f"data: {json.dumps(data, separators=(',', ':'))}\n\n"
                await asyncio.sleep(1.0)

        return headers(StreamingResponse(stream(), media_type="text/event-stream"))

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        asset = webui.static_path(name)
        if asset is None:
            return headers(Response("not found", status_code=404, media_type="text/plain"))
        return headers(FileResponse(asset[0], media_type=asset[1]))

    @app.get("/metrics")
    async def metrics() -> Response:
        body = await asyncio.to_thread(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return app


class _Quiet(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Any:  # the agent handles signals
        yield


async def serve_dashboard(source: OwnerSource) -> None:
    """Serves until cancelled. The page is not essential: a port in use or a failed server
    is logged and the task waits (it never ends on its own, which would stop the agent)."""
    listen = source.settings.dashboard.listen
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    dashboard_token(source.settings.state_dir)  # exists before anyone is told where it is
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        log.warning("owner dashboard not started", extra={"listen": listen, "why": str(exc)})
        await asyncio.Event().wait()
        return
    sock.listen(64)
    sock.setblocking(False)
    config = uvicorn.Config(
        create_app(source), lifespan="off", log_config=None, access_log=False,
        server_header=False, timeout_graceful_shutdown=1,
    )  # fmt: skip
    server = _Quiet(config)
    log.info("owner dashboard", extra={"url": f"http://{listen}/"})
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("owner dashboard failed; the node goes on without it")
        await asyncio.Event().wait()
    finally:
        server.should_exit = True
        server.force_exit = True
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 3)
        sock.close()
