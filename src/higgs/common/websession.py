"""Browser sessions for the two dashboards (bosonserver's /admin, higgsnode's owner page).

Mechanism only, no policy: an in-memory store of random session ids, each with its own CSRF
token (synchronizer token pattern), the cookie attributes, the same-origin check for changes
and the security headers every dashboard response carries.

- The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no cross-site request
  carries it), ``Secure`` when served over TLS, ``Path`` limited to the dashboard.
- A change (POST) must carry the session's CSRF token in its form and an ``Origin`` (or, when a
  browser sends none, ``Referer``) of this very host: either alone stops cross-site forms.
- The Content-Security-Policy allows scripts, styles and connections from this origin only:
  no inline script runs, so a value that slipped through escaping still could not execute.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = [
    "SECURITY_HEADERS",
    "WebSession",
    "WebSessions",
    "cookie_header",
    "same_origin",
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


@dataclass
class WebSessions:
    """Logged-in browsers: session id -> CSRF token and expiry (monotonic seconds)."""

    ttl_s: float = 8 * 3600
    max_sessions: int = 1000
    _by_id: dict[str, WebSession] = field(default_factory=dict)

    def create(self, now: float | None = None) -> tuple[str, WebSession]:
        now = time.monotonic() if now is None else now
        if len(self._by_id) >= self.max_sessions:
            self._prune(now)
            if len(self._by_id) >= self.max_sessions:  # the oldest goes
                self._by_id.pop(min(self._by_id, key=lambda k: self._by_id[k].expires))
        sid = secrets.token_urlsafe(32)
        session = self._by_id[sid] = WebSession(secrets.token_urlsafe(32), now + self.ttl_s)
        return sid, session

    def get(self, sid: str | None, now: float | None = None) -> WebSession | None:
        if not sid:
            return None
        now = time.monotonic() if now is None else now
        session = self._by_id.get(sid)
        if session is None or session.expires <= now:
            self._by_id.pop(sid, None)
            return None
        return session

    def drop(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)

    def check_csrf(self, session: WebSession, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(session.csrf, token)

    def _prune(self, now: float) -> None:
        self._by_id = {k: s for k, s in self._by_id.items() if s.expires > now}


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
