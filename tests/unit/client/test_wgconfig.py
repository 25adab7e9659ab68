from __future__ import annotations

import stat
from pathlib import Path

import png
import pytest
import qrcode

from higgs.client.wgconfig import (
    ExportError,
    TunnelConfig,
    render_qr_png,
    render_qr_terminal,
    render_wg_quick,
)
from higgs.common.keys import PrivateKey

KEY = PrivateKey(bytes(range(32)))
PEER = PrivateKey(bytes(range(1, 33))).public_b64()

GOLDEN = f"""# Higgs.net node n_abc (DE)
[Interface]
PrivateKey = {KEY.b64()}
Address = 10.77.0.5/32
DNS = 10.77.0.1
MTU = 1380

[Peer]
PublicKey = {PEER}
AllowedIPs = 0.0.0.0/0, ::/0
Endpoint = 203.0.113.7:51820
PersistentKeepalive = 25
"""


def _cfg(**kw: object) -> TunnelConfig:
    base: dict[str, object] = {
        "private_key": KEY,
        "address": "10.77.0.5/32",
        "peer_public_key": PEER,
        "allowed_ips": ("0.0.0.0/0", "::/0"),
        "dns": ("10.77.0.1",),
        "mtu": 1380,
        "endpoint": "203.0.113.7:51820",
        "persistent_keepalive": 25,
    }
    base.update(kw)
    return TunnelConfig(**base)  # type: ignore[arg-type]


def test_golden_wg_quick_text() -> None:
    assert render_wg_quick(_cfg(), comment="Higgs.net node n_abc (DE)") == GOLDEN


def test_optional_lines_left_out() -> None:
    text = render_wg_quick(_cfg(dns=(), mtu=None, persistent_keepalive=None))
    assert "DNS" not in text
    assert "MTU" not in text
    assert "PersistentKeepalive" not in text
    assert text.startswith("[Interface]\n")


def test_relay_only_node_cannot_be_exported() -> None:
    with pytest.raises(ExportError, match="no direct endpoint"):
        render_wg_quick(_cfg(endpoint=None))


def _matrix(text: str) -> list[list[bool]]:
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_L, border=2)
    code.add_data(text)
    code.make(fit=True)
    return code.get_matrix()  # type: ignore[no-any-return]


def test_terminal_qr_draws_the_modules() -> None:
    rows = render_qr_terminal(GOLDEN).splitlines()
    matrix = _matrix(GOLDEN)  # includes the 2-module border
    # Two module rows per text line; light modules are solid (dark terminal background).
    light_bits = {"█": (1, 1), "▀": (1, 0), "▄": (0, 1), "\xa0": (0, 0)}
    decoded: list[list[bool]] = [[] for _ in range(2 * len(rows))]
    for i, row in enumerate(rows):
        for ch in row:
            top, bottom = light_bits[ch]
            decoded[2 * i].append(not top)
            decoded[2 * i + 1].append(not bottom)
    assert decoded[: len(matrix)] == matrix


def test_png_holds_the_same_modules_and_is_private(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "wg.png"
    render_qr_png(GOLDEN, target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    width, height, rows, _info = png.Reader(filename=str(target)).read()
    pixels = [list(r) for r in rows]
    matrix = _matrix(GOLDEN)  # includes the 2-module border
    box = 8
    assert width == height == len(matrix) * box
    for y, line in enumerate(matrix):
        for x, dark in enumerate(line):
            assert pixels[y * box + box // 2][x * box + box // 2] == (0 if dark else 1)
