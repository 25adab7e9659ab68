"""TLS contexts for every socket the programs open: TLS 1.2 is the minimum everywhere.

Python's defaults already refuse SSLv3 and TLS 1.0/1.1 on most builds, but that depends on the
interpreter and on the OpenSSL configuration of the host (a node is a stranger's PC). Setting
``minimum_version`` on each context makes the floor ours, and every context is built here so
a test can check them all.
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["MINIMUM_TLS", "client_context", "harden", "server_context", "unverifiable_context"]

MINIMUM_TLS = ssl.TLSVersion.TLSv1_2


def harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Raises the context's floor to :data:`MINIMUM_TLS` (never lowers a higher one)."""
    if ctx.minimum_version < MINIMUM_TLS or ctx.minimum_version == ssl.TLSVersion.MINIMUM_SUPPORTED:
        ctx.minimum_version = MINIMUM_TLS
    return ctx


def client_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """Verifies the server against ``ca_file`` (or the system's CAs), TLS 1.2 or newer."""
    return harden(ssl.create_default_context(cafile=str(ca_file) if ca_file else None))


def unverifiable_context() -> ssl.SSLContext:
    """Verifies against no CA at all: every certificate is refused. For a client whose
    server speaks plain http, at no cost of loading the system's CAs."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname, CERT_REQUIRED
    return harden(ctx)


def server_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """Serves ``cert``/``key`` to TLS 1.2+ clients; raises OSError or ssl.SSLError."""
    ctx = harden(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    ctx.load_cert_chain(cert, key)
    return ctx
