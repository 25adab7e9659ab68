"""The ``/admin`` pages: login, five live pages, and the forms that change things.

Every response carries the security headers (common/websession.py); every POST except login
needs a logged-in session, its CSRF token and a same-origin ``Origin``; login needs the
same-origin check and is rate-limited per address (a wrong token costs a token of the bucket).
Live updates: ``/admin/events/{page}`` streams the page's data as server-sent events.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from higgs.common import webui
from higgs.common.websession import SECURITY_HEADERS, WebSession, cookie_header, same_origin
from higgs.protocol.api import CLIENT_NAME_PATTERN
from higgs.server.admin.views import PAGES, page_data
from higgs.server.api.deps import ApiContext
from higgs.server.services.clock import utcnow
from higgs.server.services.errors import ServiceError

__all__ = ["COOKIE", "admin"]

log = logging.getLogger(__name__)

COOKIE = "higgs_admin"
# An event stream ends after this long; EventSource reconnects by itself (bounds every stream).
STREAM_S = 300.0
PUSH_INTERVAL_S = 1.0

_env = webui.environment("higgs.server.admin")

admin = APIRouter(prefix="/admin", include_in_schema=False)


def _ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _render(name: str, status: int = 200, **values: Any) -> Response:
    html = _env.get_template(name).render(**values)
    return _headers(HTMLResponse(html, status_code=status))


async def _session(request: Request) -> WebSession | None:
    return await _ctx(request).admin_sessions.get(request.cookies.get(COOKIE))


def _to_login() -> Response:
    return _headers(RedirectResponse("/admin/login", status_code=303))


def _origin_ok(request: Request) -> bool:
    h = request.headers
    return same_origin(h.get("host"), h.get("origin"), h.get("referer"))


async def _page(request: Request, page: str, notice: str = "", secret: str = "") -> Response:
    session = await _session(request)
    if session is None:
        return _to_login()
    data = await page_data(_ctx(request), page)
    return _render(
        f"{page}.html", page=page, pages=PAGES, data=data, csrf=session.csrf,
        notice=notice, secret=secret,
    )  # fmt: skip


@admin.get("/login")
async def login_form(request: Request) -> Response:
    return _render("login.html", error="")


@admin.post("/login")
async def login(request: Request, token: Annotated[str, Form(max_length=200)] = "") -> Response:
    ctx = _ctx(request)
    if not _origin_ok(request):
        return _render("login.html", 403, error="refused: the form did not come from this page")
    host = request.client.host if request.client else "unknown"
    wait = ctx.login_limiter.take("login:" + host)
    if wait:
        ctx.metrics.rate_limited.labels(kind="admin_login").inc()
        response = _render("login.html", 429, error="too many login attempts; wait a minute")
        response.headers["Retry-After"] = ctx.login_limiter.retry_after_header(wait)
        return response
    try:
        if not token.startswith("hga_"):
            raise ServiceError("invalid_token", "not an admin token")
        await ctx.identity.check_admin(token)
    except ServiceError:
        log.warning("admin dashboard login refused", extra={"addr": host})
        return _render("login.html", 401, error="that is not the admin token")
    sid, _ = await ctx.admin_sessions.create()
    response = _headers(RedirectResponse("/admin/", status_code=303))
    response.headers["Set-Cookie"] = cookie_header(
        COOKIE, sid, path="/admin", secure=_secure(request),
        max_age=int(ctx.admin_sessions.ttl_s),
    )  # fmt: skip
    log.info("admin dashboard login", extra={"addr": host})
    return response


async def _checked(request: Request, csrf: str) -> WebSession | Response:
    session = await _session(request)
    if session is None:
        return _to_login()
    if not _origin_ok(request) or not _ctx(request).admin_sessions.check_csrf(session, csrf):
        return _render("login.html", 403, error="refused: stale or cross-site form; log in again")
    return session


@admin.post("/logout")
async def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    checked = await _checked(request, csrf)
    if isinstance(checked, Response):
        return checked
    await _ctx(request).admin_sessions.drop(request.cookies.get(COOKIE))
    response = _to_login()
    response.headers["Set-Cookie"] = cookie_header(
        COOKIE, "", path="/admin", secure=_secure(request), max_age=0
    )
    return response


@admin.get("/")
async def nodes_page(request: Request) -> Response:
    return await _page(request, "nodes")


@admin.get("/{page}")
async def other_page(request: Request, page: str) -> Response:
    if page not in PAGES:
        return _render("login.html", 404, error=f"no page {page!r}")
    return await _page(request, page)


@admin.get("/static/{name}")
async def static(name: str) -> Response:
    asset = webui.static_path(name)
    if asset is None:
        return _headers(Response("not found", status_code=404, media_type="text/plain"))
    return _headers(FileResponse(asset[0], media_type=asset[1]))


@admin.get("/events/{page}")
async def events(request: Request, page: str) -> Response:
    if page not in PAGES:
        return _headers(Response("no such page", status_code=404, media_type="text/plain"))
    if await _session(request) is None:
        return _headers(Response("log in first", status_code=401, media_type="text/plain"))
    ctx = _ctx(request)

    async def stream() -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        end = loop.time() + STREAM_S
        last = ""
        yield "retry: 2000\n\n"
        while loop.time() < end and await _session(request) is not None:
            if await request.is_disconnected():
                return
            try:
                text = json.dumps(await page_data(ctx, page), separators=(",", ":"))
            except Exception:
                log.exception("dashboard update failed")
                text = last
            if text != last:
                last = text
                yield f"data: {text}\n\n"
            else:
                yield ": keepalive\n\n"
            await asyncio.sleep(PUSH_INTERVAL_S)

    response = StreamingResponse(stream(), media_type="text/event-stream")
    response.headers["X-Accel-Buffering"] = "no"
    return _headers(response)


# --- changes -----------------------------------------------------------------------------------


async def _change(request: Request, csrf: str, page: str, action: Any) -> Response:
    checked = await _checked(request, csrf)
    if isinstance(checked, Response):
        return checked
    try:
        notice, secret = await action()
    except ServiceError as exc:
        return await _page(request, page, notice=f"refused: {exc.message}")
    return await _page(request, page, notice=notice, secret=secret)


def _name_ok(name: str) -> bool:
    import re

    return re.fullmatch(CLIENT_NAME_PATTERN, name) is not None


@admin.post("/clients")
async def create_client(
    request: Request,
    csrf: Annotated[str, Form()] = "",
    name: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    ctx = _ctx(request)

    async def act() -> tuple[str, str]:
        if not _name_ok(name):
            raise ServiceError("invalid_name", "name: 1-64 letters, digits, _ . @ -")
        token = await ctx.identity.add_client(name)
        return f"client {name} created; its token (shown once):", token

    return await _change(request, csrf, "clients", act)


@admin.post("/clients/{name}/revoke")
async def revoke_client(request: Request, name: str, csrf: Annotated[str, Form()] = "") -> Response:
    ctx = _ctx(request)

    async def act() -> tuple[str, str]:
        client_id = await ctx.identity.mark_revoked(name)
        closed = await ctx.sessions.close_for_client(client_id, "client_revoked")
        return f"client {name} revoked; {closed} sessions closed", ""

    return await _change(request, csrf, "clients", act)


@admin.post("/clients/{name}/quota")
async def set_quota(
    request: Request,
    name: str,
    csrf: Annotated[str, Form()] = "",
    quota_mb: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    ctx = _ctx(request)

    async def act() -> tuple[str, str]:
        text = quota_mb.strip()
        try:
            quota = None if not text else int(float(text) * 1_000_000)
        except ValueError:
            raise ServiceError("invalid_quota", "quota: a number of MB, or empty") from None
        if quota is not None and quota < 0:
            raise ServiceError("invalid_quota", "quota: must not be negative")
        if ctx.usage is None:
            raise ServiceError("unavailable", "usage accounting is off")
        await ctx.usage.set_quota(name, quota)
        shown = "unlimited" if quota is None else f"{quota / 1_000_000:g} MB"
        return f"quota of {name}: {shown} per month", ""

    return await _change(request, csrf, "clients", act)


@admin.post("/enrollment-keys")
async def create_enrollment_key(
    request: Request,
    csrf: Annotated[str, Form()] = "",
    uses: Annotated[int, Form(ge=1, le=100_000)] = 1,
) -> Response:
    ctx = _ctx(request)

    async def act() -> tuple[str, str]:
        key = await ctx.identity.create_enrollment_key(uses, None)
        return (
            f"enrollment key for {uses} node(s) created at {utcnow():%H:%M:%S} (shown once):",
            key,
        )

    return await _change(request, csrf, "clients", act)


@admin.post("/enrollment-keys/{key_id}/revoke")
async def revoke_enrollment_key(
    request: Request, key_id: int, csrf: Annotated[str, Form()] = ""
) -> Response:
    ctx = _ctx(request)

    async def act() -> tuple[str, str]:
        await ctx.identity.revoke_enrollment_key(key_id)
        return f"enrollment key {key_id} revoked", ""

    return await _change(request, csrf, "clients", act)
