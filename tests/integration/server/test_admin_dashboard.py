"""The /admin dashboard over HTTP: login, cookie, CSRF, same-origin, CSP, escaping, SSE."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from higgs.server.admin.routes import COOKIE
from tests.integration.server.conftest import Harness, make_settings, start


def _origin(srv: Harness) -> dict[str, str]:
    return {"Origin": srv.server.api_url}


async def _login(srv: Harness) -> str:
    """Logs the harness's client in (it keeps the cookie); returns the page's CSRF token."""
    r = await srv.http.post("/admin/login", data={"token": srv.admin_token}, headers=_origin(srv))
    assert r.status_code == 303, r.text
    page = await srv.http.get("/admin/clients")
    match = re.search(r'<meta name="csrf" content="([^"]+)"', page.text)
    assert match
    return match.group(1)


async def test_login_sets_a_strict_httponly_cookie_and_pages_carry_a_csp(srv: Harness) -> None:
    r = await srv.http.get("/admin/")
    assert (r.status_code, r.headers["location"]) == (303, "/admin/login")
    r = await srv.http.get("/admin/login")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "default-src 'none'" in csp
    assert "unsafe-inline" not in csp
    assert r.headers["x-frame-options"] == "DENY"
    # No Origin (or another site's): refused before the token is even looked at.
    r = await srv.http.post("/admin/login", data={"token": srv.admin_token})
    assert r.status_code == 403
    r = await srv.http.post(
        "/admin/login", data={"token": srv.admin_token}, headers={"Origin": "http://evil.test"}
    )
    assert r.status_code == 403
    r = await srv.http.post("/admin/login", data={"token": "hga_nope"}, headers=_origin(srv))
    assert r.status_code == 401
    r = await srv.http.post("/admin/login", data={"token": srv.admin_token}, headers=_origin(srv))
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/admin" in cookie
    assert "Secure" not in cookie  # plain HTTP here; TLS adds it
    assert srv.admin_token not in cookie


async def test_logins_are_rate_limited(srv: Harness) -> None:
    codes = [
        (
            await srv.http.post("/admin/login", data={"token": "hga_x"}, headers=_origin(srv))
        ).status_code
        for _ in range(7)
    ]
    assert codes[:5] == [401] * 5
    assert codes[-1] == 429
    r = await srv.http.post("/admin/login", data={"token": srv.admin_token}, headers=_origin(srv))
    assert r.status_code == 429  # even the right token waits: guessing must not pay


async def test_changes_need_the_csrf_token_and_the_same_origin(srv: Harness) -> None:
    csrf = await _login(srv)
    r = await srv.http.post(
        "/admin/clients", data={"name": "mallory", "csrf": "wrong"}, headers=_origin(srv),
    )  # fmt: skip
    assert r.status_code == 403
    r = await srv.http.post(
        "/admin/clients", data={"name": "mallory", "csrf": csrf},
        headers={"Origin": "http://evil.test"},
    )  # fmt: skip
    assert r.status_code == 403
    assert "mallory" not in [c.name for c in await srv.ctx.identity.list_clients()]
    r = await srv.http.post(
        "/admin/clients", data={"name": "alice", "csrf": csrf}, headers=_origin(srv),
    )  # fmt: skip
    assert r.status_code == 200
    token = re.search(r'<code id="secret">(hgc_[^<]+)</code>', r.text)
    assert token  # shown once, in the answer to the change
    assert (await srv.ctx.identity.authenticate_client(token.group(1))).name == "alice"
    r = await srv.http.post(
        "/admin/clients/alice/quota", data={"quota_mb": "abc", "csrf": csrf},
        headers=_origin(srv),
    )  # fmt: skip
    assert r.status_code == 200
    assert "quota: a number of MB" in r.text


async def test_values_from_nodes_are_escaped_and_stream_as_json(srv: Harness) -> None:
    payload = "<script>alert(1)</script>"
    await srv.node(region=payload)
    await _login(srv)
    page = await srv.http.get("/admin/")
    assert payload not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    async with srv.http.stream("GET", "/admin/events/nodes") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                data = json.loads(line[6:])
                break
    (row,) = data["tables"]["nodes"]["rows"]
    assert row[3] == payload  # JSON text, written with textContent by live.js
    srv.http.cookies.clear()  # the client keeps the session cookie: log out of it
    r = await srv.http.get("/admin/events/nodes")
    assert r.status_code == 401


async def test_a_login_survives_a_server_restart(
    tmp_path: Path, database: str | None, hub_factory: tuple[list[Any], Any]
) -> None:
    settings = make_settings(tmp_path, database)
    async with start(settings, hub_factory) as first:
        csrf = await _login(first)
        sid = first.http.cookies[COOKIE]
    async with start(settings, hub_factory) as second:  # a new process's state: only the DB
        second.http.cookies.set(COOKIE, sid)
        page = await second.http.get("/admin/clients")
        assert page.status_code == 200, page.text
        assert f'<meta name="csrf" content="{csrf}"' in page.text  # the same session
        second.http.cookies.set(COOKIE, sid[:-2] + "xx")
        assert (await second.http.get("/admin/clients")).status_code == 303  # to the login


def test_the_path_column_shows_any_path_value_as_text() -> None:
    from datetime import UTC, datetime

    from higgs.protocol.api import AdminSession
    from higgs.server.admin.views import _sessions

    # Unvalidated on purpose (a path value the model would refuse), and only with the fields
    # the sessions table reads.
    session = AdminSession.model_construct(  # type: ignore[call-arg]
        session_id="s_1", client="alice", node_id="n_1", mode="auto",
        relay_datagrams=0, created_at=datetime.now(UTC),
    )  # fmt: skip
    for path in ("punched", "udp_relay", "<b>new</b>"):
        data = _sessions(None, [session], lambda _s: (0, 0), {"s_1": path})  # type: ignore[arg-type]
        (row,) = data["tables"]["sessions"]["rows"]
        assert row[3] == f"{path} (asked: auto (direct or relay))"


@pytest.mark.parametrize(
    "settings_overrides", [{"udp_relay_address": "192.0.2.1", "udp_relay_ports": "40000-40001"}]
)
async def test_a_session_on_a_punched_path_shows_its_node_as_hole_punched(srv: Harness) -> None:
    from sqlalchemy import update

    from higgs.server.store.tables import RelayLease

    await srv.node(endpoint=None)  # behind its home router: no direct endpoint
    r = await srv.route(await srv.client_token("alice"))
    assert r.status_code == 201, r.text
    await _login(srv)
    assert "relayed (1 session" in (await srv.http.get("/admin/")).text
    # What the punch service records once the node's peer sits on the client's public address.
    async with srv.ctx.db.begin() as conn:
        await conn.execute(
            update(RelayLease)
            .where(RelayLease.session_id == r.json()["session_id"])
            .values(client_seen="198.51.100.9:5000", node_seen="203.0.113.4:6000",
                    punched_endpoint="198.51.100.9:5000")
        )  # fmt: skip
    page = (await srv.http.get("/admin/")).text
    assert "hole-punched (1 session)" in page
    assert "relayed (1 session" not in page
