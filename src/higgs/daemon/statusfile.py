"""The status file a daemon rewrites every few seconds and the CLI's ``status`` reads:
JSON, replaced atomically (temp file, rename) so a reader never sees half of it, mode 0600."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["read", "write"]


def write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (json.dumps(data, indent=1, default=str) + "\n").encode())
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read(path: Path) -> dict[str, Any] | None:
    """The last status written, or None (no file, or not a JSON object)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
