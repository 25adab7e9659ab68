"""Browser sessions for the two dashboards (bosonserver's /admin, higgsnode's owner page).

Mechanism only, no policy: session ids hashed for storage and their CSRF tokens derived
(synchronizer token pattern), a file-backed store of them (the node's; the server keeps its own
in the database), the cookie attributes, the same-origin check for changes and the security
headers every dashboard response carries.

- The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no cross-site request
  carries it), ``Secure`` when served over TLS, ``Path`` limited to the dashboard.
- A change (POST) must carry the session's CSRF token in its form and an ``Origin`` (or, when a
  browser sends none, ``Referer``) of this very host: either alone stops cross-site forms.
- The Content-Security-Policy allows scripts, styles and connections from this origin only:
  no inline script runs, so a value that slipped through escaping still could not execute.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "SECURITY_HEADERS",
    "FileWebSessions",
    "WebSession",
    "check_csrf",
    "cookie_header",
    "derive_csrf",
    "same_origin",
    "session_id_hash",
]

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass
class WebSession:
    csrf: str
    expires: float


def session_id_hash(sid: str) -> str:
    """What a store keeps of a session id: its SHA-256 (a leaked store logs no one in)."""
    return hashlib.sha256(sid.encode()).hexdigest()


def derive_csrf(sid: str, label: bytes) -> str:
    """The session's CSRF token, derived from its id under ``label`` (so it needs no storage,
    changes with every login and reveals neither the id nor its stored hash)."""
    return hashlib.sha256(label + b"\0" + sid.encode()).hexdigest()


def check_csrf(session: WebSession, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(session.csrf, token)


@dataclass
class FileWebSessions:
    """Logged-in browsers in a small JSON file (0600), so a restart logs no one out: only the
    SHA-256 of each cookie's random id is kept, with its expiry (Unix seconds: a monotonic
    clock does not survive a restart), which :meth:`get` enforces. Every call reads the file
    (a few hundred bytes): it is the only truth, and a store that cannot be read (missing,
    damaged) holds no session -- the owner logs in again, nothing worse."""

    path: Path
    csrf_label: bytes
    ttl_s: float = 8 * 3600
    max_sessions: int = 100
    clock: Callable[[], float] = time.time

    def create(self) -> tuple[str, WebSession]:
        now = self.clock()
        kept = {h: e for h, e in self._load().items() if e > now}
        while len(kept) >= self.max_sessions:  # the oldest goes
            kept.pop(min(kept, key=lambda h: kept[h]))
        sid = secrets.token_urlsafe(32)
        expires = now + self.ttl_s
        kept[session_id_hash(sid)] = expires
        self._save(kept)
        return sid, WebSession(derive_csrf(sid, self.csrf_label), expires)

    def get(self, sid: str | None) -> WebSession | None:
        if not sid or len(sid) > 100:
            return None
        stored = self._load()
        id_hash = session_id_hash(sid)
        expires = stored.get(id_hash)
        if expires is None:
            return None
        if expires <= self.clock():
            del stored[id_hash]
            self._save(stored)
            return None
        return WebSession(derive_csrf(sid, self.csrf_label), expires)

    def drop(self, sid: str | None) -> None:
        if not sid:
            return
        stored = self._load()
        if stored.pop(session_id_hash(sid), None) is not None:
            self._save(stored)

    check_csrf = staticmethod(check_csrf)

    def _load(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        sessions = data.get("sessions") if isinstance(data, dict) else None
        if not isinstance(sessions, dict):
            return {}
        return {
            str(h): float(e)
            for h, e in sessions.items()
            if isinstance(e, int | float) and len(str(h)) == 64
        }

    def _save(self, sessions: dict[str, float]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"sessions": sessions}, f)
        os.replace(tmp, self.path)


def cookie_header(name: str, value: str, *, path: str, secure: bool, max_age: int) -> str:
    """The Set-Cookie value (max_age 0 deletes it)."""
    parts = [f"{name}={value}", f"Path={path}", f"Max-Age={max_age}", "HttpOnly"]
    parts.append("SameSite=Strict")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def same_origin(host: str | None, origin: str | None, referer: str | None) -> bool:
    """True when the request's Origin (else Referer) names this host (the Host header).
    With neither header the request is refused: browsers send Origin on every POST."""
    if not host:
        return False
    source = origin if origin and origin != "null" else referer
    if not source:
        return False
    parts = urlsplit(source)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()
