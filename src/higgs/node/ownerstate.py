"""What the owner's page and the CLI share through the state directory: the pause switch, the
last ``diagnose`` result and the dashboard's token (all small files, 0600).

A file, not memory, so that the switch survives a restart of the agent (a paused node stays
paused) and ``diagnose`` (a separate process) can leave its findings for the page.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

__all__ = [
    "DASHBOARD_SESSIONS_FILE",
    "DASHBOARD_TOKEN_FILE",
    "DIAGNOSE_FILE",
    "PAUSED_FILE",
    "dashboard_token",
    "is_paused",
    "load_diagnose",
    "save_diagnose",
    "set_paused",
]

PAUSED_FILE = "paused"
DIAGNOSE_FILE = "diagnose.json"
DASHBOARD_TOKEN_FILE = "dashboard.token"  # noqa: S105 - a file name
# The owner's logins (hashed ids and expiries; common/websession.FileWebSessions).
DASHBOARD_SESSIONS_FILE = "dashboard-sessions.json"


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def is_paused(state_dir: Path) -> bool:
    return (state_dir / PAUSED_FILE).exists()


def set_paused(state_dir: Path, paused: bool) -> None:
    path = state_dir / PAUSED_FILE
    if paused:
        _write_private(path, "paused by the owner\n")
    else:
        path.unlink(missing_ok=True)


def save_diagnose(state_dir: Path, results: list[dict[str, Any]], when: float) -> None:
    _write_private(state_dir / DIAGNOSE_FILE, json.dumps({"at": when, "checks": results}))


def load_diagnose(state_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((state_dir / DIAGNOSE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def dashboard_token(state_dir: Path) -> str:
    """The owner's login token, created on first use (0600: only root reads it)."""
    path = state_dir / DASHBOARD_TOKEN_FILE
    try:
        token = path.read_text().strip()
        if token:
            return token
    except OSError:
        pass
    token = "hgo_" + secrets.token_urlsafe(32)
    _write_private(path, token + "\n")
    return token
