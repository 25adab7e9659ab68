from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from higgs.common.websession import (
    SECURITY_HEADERS,
    FileWebSessions,
    cookie_header,
    same_origin,
    session_id_hash,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _store(path: Path, clock: Clock, **kw: Any) -> FileWebSessions:
    return FileWebSessions(path, b"test csrf", clock=clock, **kw)


def test_sessions_expire_and_csrf_is_per_session(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path / "s.json", clock, ttl_s=10)
    sid, session = store.create()
    other_sid, other = store.create()
    assert sid != other_sid
    assert session.csrf != other.csrf
    clock.now += 9
    assert store.get(sid) == session
    assert store.check_csrf(session, session.csrf)
    assert not store.check_csrf(session, other.csrf)
    assert not store.check_csrf(session, None)
    clock.now += 1
    assert store.get(sid) is None  # expired, and forgotten
    clock.now -= 10
    assert store.get(sid) is None
    assert store.get(None) is None
    store.drop(other_sid)
    assert store.get(other_sid) is None


def test_a_login_survives_a_restart_in_a_private_file_of_hashes(tmp_path: Path) -> None:
    clock, path = Clock(), tmp_path / "s.json"
    sid, session = _store(path, clock).create()
    # A new process: another store on the same file.
    assert _store(path, clock).get(sid) == session
    assert _store(path, clock).get(sid[:-1] + ("A" if sid[-1] != "A" else "B")) is None
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert sid not in text  # only the id's hash: the file logs no one in
    assert session.csrf not in text
    assert session_id_hash(sid) in text
    # The CSRF token depends on the label: the two dashboards' tokens never match.
    assert FileWebSessions(path, b"other", clock=clock).get(sid) != session


def test_expiry_is_enforced_across_restarts_and_removes_the_row(tmp_path: Path) -> None:
    clock, path = Clock(), tmp_path / "s.json"
    sid, _ = _store(path, clock, ttl_s=60).create()
    clock.now += 61
    assert _store(path, clock, ttl_s=60).get(sid) is None
    assert session_id_hash(sid) not in path.read_text()


def test_a_damaged_file_holds_no_session_and_is_replaced(tmp_path: Path) -> None:
    clock, path = Clock(), tmp_path / "s.json"
    path.write_text("{not json")
    store = _store(path, clock)
    assert store.get("x" * 43) is None
    sid, session = store.create()
    assert store.get(sid) == session
    path.write_text(json.dumps({"sessions": {session_id_hash(sid): "soon"}}))
    assert store.get(sid) is None


def test_the_store_is_bounded(tmp_path: Path) -> None:
    clock = Clock()
    store = _store(tmp_path / "s.json", clock, ttl_s=100, max_sessions=3)
    sids = []
    for _ in range(5):
        sids.append(store.create()[0])
        clock.now += 1
    assert [store.get(s) is not None for s in sids] == [False, False, True, True, True]


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
