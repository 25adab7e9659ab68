"""Credentials: generation, hashing for storage, and redaction for logs.

Every token carries a prefix naming its kind, so that a leaked string can be recognised and so
that logs can be scrubbed by pattern:

========  ==================================================
prefix    credential
========  ==================================================
``hga_``  operator admin token
``hge_``  node enrollment key
``hgn_``  node credential (issued at registration)
``hgc_``  client API token
``hgr_``  relay session token (admits one client to one session)
========  ==================================================

Tokens have 256 bits of randomness, so a plain SHA-256 is a sufficient storage hash (no
password stretching is needed for high-entropy secrets).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

__all__ = ["TOKEN_PREFIXES", "hash_token", "new_token", "redact", "tokens_equal"]

TOKEN_PREFIXES = ("hga_", "hge_", "hgn_", "hgc_", "hgr_")
_TOKEN_RE = re.compile(r"\b(hg[aencr]_)[A-Za-z0-9_\-.]{6,}")


def new_token(prefix: str) -> str:
    if prefix not in TOKEN_PREFIXES:
        raise ValueError(f"unknown token prefix {prefix!r}")
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def redact(text: str) -> str:
    """Replaces every token in ``text`` by its prefix and a placeholder."""
    return _TOKEN_RE.sub(lambda m: m.group(1) + "***", text)
