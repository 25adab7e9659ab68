"""Searches the logs a lab run wrote for credentials and private keys.

Every lab keeps its processes' output (``*.log``) in its work directory, next to the state
those processes keep (the node's ``private.key``, the server's ``admin.token``, state files
holding ``hgn_`` tokens, WireGuard configs). Before the work directory is removed, the lab
runs :func:`scan` on it:

- every *secret* found in the state files is searched for, verbatim, in every log: a private
  key is a 44-character base64 key alone in a file that only its owner may read, or the value
  of a ``PrivateKey =`` line; a token is any ``hg?_…`` credential;
- every log is also searched for any whole token (``redact`` leaves ``hgn_***``), whether or
  not its value is known.

Findings name the file, the line and the kind, never the secret. :data:`FINDINGS` collects
those of every lab in this process, so a test session can fail when any lab found one.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FINDINGS", "Finding", "collect_secrets", "scan"]

_TOKEN_RE = re.compile(r"\bhg[aencr]_[A-Za-z0-9_\-]{20,}")
_KEY_RE = re.compile(r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")
_PRIVATE_LINE_RE = re.compile(r"(?im)^\s*PrivateKey\s*=\s*([A-Za-z0-9+/]{43}=)\s*$")
_MAX_FILE = 4 * 1024 * 1024  # state files are small; downloads and captures are skipped


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    kind: str  # "token" or "private key"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: a {self.kind} in a log"


FINDINGS: list[Finding] = []


def _is_log(path: Path) -> bool:
    return path.suffix == ".log"


def _read(path: Path) -> str | None:
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_FILE:
            return None
        return path.read_text(errors="replace")
    except OSError:
        return None


def collect_secrets(root: Path) -> dict[str, str]:
    """The secrets kept in ``root``'s state files: value -> kind."""
    secrets: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if _is_log(path):
            continue
        text = _read(path)
        if text is None:
            continue
        owner_only = not path.lstat().st_mode & 0o077
        if owner_only and _KEY_RE.match(text.strip()):
            secrets[text.strip()] = "private key"
        for match in _PRIVATE_LINE_RE.finditer(text):
            secrets[match.group(1)] = "private key"
        for match in _TOKEN_RE.finditer(text):
            secrets[match.group(0)] = "token"
    return secrets


def scan(root: Path) -> list[Finding]:
    """Every secret in a log under ``root``; also appended to :data:`FINDINGS`."""
    if not root.is_dir():
        return []
    secrets = collect_secrets(root)
    found: list[Finding] = []
    for path in sorted(p for p in root.rglob("*.log")):
        text = _read(path)
        if text is None:
            continue
        where = str(path.relative_to(root))
        for number, line in enumerate(text.splitlines(), 1):
            kinds = {kind for value, kind in secrets.items() if value in line}
            if _TOKEN_RE.search(line):
                kinds.add("token")
            found += [Finding(where, number, kind) for kind in sorted(kinds)]
    FINDINGS.extend(found)
    return found
