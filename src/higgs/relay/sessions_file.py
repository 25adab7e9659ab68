"""A static session source for a relay without a database (tests, a lab, a benchmark).

The file is a JSON list ``[{"session_id": "s_1", "port": 40000, "client_key": "<base64>",
"node_key": "<base64>"}, ...]``; the relay reads it again whenever it changes.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

from higgs.common.errors import HiggsError
from higgs.relay.forwarder import SessionSpec

__all__ = ["SessionsFileError", "read_sessions", "write_sessions"]


class SessionsFileError(HiggsError):
    """The sessions file is not what the relay expects; the message names the field."""


def _key(item: dict[str, object], field: str, where: str) -> bytes:
    try:
        raw = base64.b64decode(str(item[field]), validate=True)
    except (KeyError, binascii.Error) as exc:
        raise SessionsFileError(f"{where}.{field}: a base64 WireGuard public key") from exc
    if len(raw) != 32:
        raise SessionsFileError(f"{where}.{field}: a WireGuard public key is 32 bytes")
    return raw


def read_sessions(path: Path) -> list[SessionSpec]:
    try:
        items = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SessionsFileError(f"{path}: {exc}") from exc
    if not isinstance(items, list):
        raise SessionsFileError(f"{path}: expected a JSON list of sessions")
    specs = []
    for i, item in enumerate(items):
        where = f"{path.name}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("port"), int):
            raise SessionsFileError(f"{where}.port: an integer port")
        specs.append(
            SessionSpec(
                str(item.get("session_id", f"s_{item['port']}")),
                item["port"],
                _key(item, "client_key", where),
                _key(item, "node_key", where),
            )
        )
    return specs


def write_sessions(path: Path, specs: list[SessionSpec]) -> None:
    data = [
        {
            "session_id": s.session_id,
            "port": s.port,
            "client_key": base64.b64encode(s.client_key).decode(),
            "node_key": base64.b64encode(s.node_key).decode(),
        }
        for s in specs
    ]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
