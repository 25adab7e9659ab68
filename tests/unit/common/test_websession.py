from __future__ import annotations

import pytest

from higgs.common.websession import SECURITY_HEADERS, WebSessions, cookie_header, same_origin


def test_sessions_expire_and_csrf_is_per_session() -> None:
    store = WebSessions(ttl_s=10)
    sid, session = store.create(now=0)
    other_sid, other = store.create(now=0)
    assert sid != other_sid
    assert session.csrf != other.csrf
    assert store.get(sid, now=9) is session
    assert store.check_csrf(session, session.csrf)
    assert not store.check_csrf(session, other.csrf)
    assert not store.check_csrf(session, None)
    assert store.get(sid, now=10) is None  # expired, and forgotten
    assert store.get(sid, now=0) is None
    assert store.get(None) is None
    store.drop(other_sid)
    assert store.get(other_sid, now=1) is None


def test_the_store_is_bounded() -> None:
    store = WebSessions(ttl_s=100, max_sessions=3)
    sids = [store.create(now=i)[0] for i in range(5)]
    assert [store.get(s, now=5) is not None for s in sids] == [False, False, True, True, True]


def test_cookie_attributes() -> None:
    plain = cookie_header("c", "v", path="/admin", secure=False, max_age=60)
    assert plain == "c=v; Path=/admin; Max-Age=60; HttpOnly; SameSite=Strict"
    assert cookie_header("c", "v", path="/", secure=True, max_age=0).endswith("; Secure")


@pytest.mark.parametrize(
    ("host", "origin", "referer", "ok"),
    [
        ("127.0.0.1:8080", "http://127.0.0.1:8080", None, True),
        ("vpn.example", "https://vpn.example", None, True),
        ("vpn.example", "https://evil.example", None, False),
        ("vpn.example", "https://vpn.example.evil", None, False),
        ("vpn.example", None, "https://vpn.example/admin/clients", True),
        ("vpn.example", "null", "https://evil.example/", False),
        ("vpn.example", None, None, False),
        (None, "https://vpn.example", None, False),
        ("vpn.example", "javascript://vpn.example", None, False),
    ],
)
def test_same_origin(host: str | None, origin: str | None, referer: str | None, ok: bool) -> None:
    assert same_origin(host, origin, referer) is ok


def test_csp_allows_no_inline_script_and_no_other_origin() -> None:
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self';" in csp
    assert "unsafe" not in csp
    assert "frame-ancestors 'none'" in csp
