"""Logging setup: human-readable by default, JSON lines with a flag, secrets always redacted.

Every credential Higgs.net issues starts with a recognisable prefix (see
:data:`higgs.common.secrets.TOKEN_PREFIXES`), so a filter can scrub tokens from any message,
even one formatted by a library. Private keys never reach a logger: they live in
:class:`higgs.common.keys.PrivateKey`, whose ``repr`` and ``str`` hide the key.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from higgs.common.secrets import redact

__all__ = ["RedactingFilter", "setup_logging"]

_STD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """Replaces anything that looks like one of our tokens with a placeholder."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        for key, value in list(record.__dict__.items()):
            if key not in _STD_ATTRS and isinstance(value, str):
                record.__dict__[key] = redact(value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out)


class HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = [
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STD_ATTRS and not k.startswith("_")
        ]
        return f"{base} {' '.join(extras)}" if extras else base


def setup_logging(*, json_lines: bool = False, level: str | int = "INFO") -> None:
    """Configures the root logger once per process (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        # Milliseconds: a start-up's steps (a node's restart) are read off these lines.
        handler.setFormatter(
            HumanFormatter(
                "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"
            )
        )
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
