"""Time and identifiers, in one place so that every row uses the same conventions."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

__all__ = ["new_node_id", "new_session_id", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_node_id() -> str:
    return "n_" + secrets.token_hex(8)


def new_session_id() -> str:
    return "s_" + secrets.token_hex(8)
