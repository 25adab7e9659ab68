"""A route answer as a standard wg-quick config, and that config as a QR code.

The text is what the official WireGuard apps import (``wg-quick`` format): it is used by
``higgsvpn export`` for direct mode, where a stock WireGuard client talks straight to the node.
Relay mode cannot be exported: it needs higgsvpn's bridge between WireGuard and the WebSocket.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import qrcode
import qrcode.image.pure

from higgs.common.errors import HiggsError
from higgs.common.keys import PrivateKey

__all__ = ["ExportError", "TunnelConfig", "render_qr_png", "render_qr_terminal", "render_wg_quick"]


class ExportError(HiggsError):
    """The config cannot be exported (e.g. the node has no direct endpoint)."""


@dataclass(frozen=True)
class TunnelConfig:
    """The client side of one WireGuard tunnel, as the server's route answer describes it."""

    private_key: PrivateKey
    address: str
    peer_public_key: str
    allowed_ips: tuple[str, ...]
    dns: tuple[str, ...] = ()
    mtu: int | None = None
    endpoint: str | None = None
    persistent_keepalive: int | None = None


def render_wg_quick(cfg: TunnelConfig, *, comment: str | None = None) -> str:
    """The wg-quick(8) text for ``cfg``; the endpoint is required (direct mode only)."""
    if not cfg.endpoint:
        raise ExportError(
            "this node has no direct endpoint (it is reachable only through the relay); "
            "a stock WireGuard app cannot use it: connect with higgsvpn instead"
        )
    lines: list[str] = []
    if comment:
        lines.extend(f"# {line}" for line in comment.splitlines())
    lines += ["[Interface]", f"PrivateKey = {cfg.private_key.b64()}", f"Address = {cfg.address}"]
    if cfg.dns:
        lines.append(f"DNS = {', '.join(cfg.dns)}")
    if cfg.mtu:
        lines.append(f"MTU = {cfg.mtu}")
    lines += [
        "",
        "[Peer]",
        f"PublicKey = {cfg.peer_public_key}",
        f"AllowedIPs = {', '.join(cfg.allowed_ips)}",
        f"Endpoint = {cfg.endpoint}",
    ]
    if cfg.persistent_keepalive:
        lines.append(f"PersistentKeepalive = {cfg.persistent_keepalive}")
    return "\n".join(lines) + "\n"


def _qr(text: str, box_size: int = 10) -> qrcode.QRCode:
    # Error correction L keeps the code small enough for a terminal; the apps scan it fine.
    code = qrcode.QRCode(
        error_correction=qrcode.constants.ERROR_CORRECT_L, border=2, box_size=box_size
    )
    code.add_data(text)
    code.make(fit=True)
    return code


def render_qr_terminal(text: str) -> str:
    """The QR code in Unicode half blocks, light modules solid: for the usual dark terminal."""
    out = io.StringIO()
    _qr(text).print_ascii(out=out, invert=True)
    return out.getvalue()


def render_qr_png(text: str, path: Path) -> None:
    """Writes the QR code as a PNG (pure Python: qrcode's PyPNG image, no Pillow)."""
    image = _qr(text, box_size=8).make_image(image_factory=qrcode.image.pure.PyPNGImage)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The PNG holds the private key: same protection as the key file itself.
    fd = _open_private(path)
    with open(fd, "wb") as fh:
        image.save(fh)


def _open_private(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return fd
