"""``status.json``: what the background process reports about the connection, and its display.

The daemon rewrites the file every few seconds (atomically); ``higgsvpn status`` reads it and
checks that the daemon named in it is still alive, so a stale file never shows a dead tunnel
as connected.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from higgs.daemon import statusfile

__all__ = ["StatusReport", "format_status", "read_status", "write_status"]


class StatusReport(BaseModel):
    pid: int
    state: str  # connected | reconnecting
    interface: str
    server_url: str
    session_id: str
    node_id: str
    country: str | None
    region: str | None
    mode: str
    address: str
    path_why: str = ""
    dns: list[str]
    full_tunnel: bool
    kill_switch: bool
    connected_at: float
    latest_handshake: float
    rx_bytes: int
    tx_bytes: int
    tunnel_rtt_ms: float | None
    server_rtt_ms: float | None
    relay_reconnects: int
    reroutes: int
    last_error: str | None
    updated_at: float
    # Issue 12: our WireGuard socket's public ip:port as the server observed it, and how many
    # times the path changed while connected (relay → punched → relay ...).
    public_endpoint: str | None = None
    path_changes: int = 0
    path_since: float | None = None  # unix time the current path (mode) came up
    # This session's latest hole-punch attempts: (unix time it ended, punched | failed).
    punches: list[tuple[float, str]] = []

    def handshake_age_s(self, now: float | None = None) -> float | None:
        if not self.latest_handshake:
            return None
        return max(0.0, (time.time() if now is None else now) - self.latest_handshake)

    def to_json(self) -> dict[str, Any]:
        out = self.model_dump()
        out["connected"] = True
        out["handshake_age_s"] = self.handshake_age_s()
        return out


def write_status(path: Path, report: StatusReport) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    statusfile.write(path, report.model_dump(mode="json"))


def read_status(path: Path) -> StatusReport | None:
    data = statusfile.read(path)
    try:
        return None if data is None else StatusReport.model_validate(data)
    except ValidationError:
        return None


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def format_status(report: StatusReport, now: float | None = None) -> str:
    age = report.handshake_age_s(now)
    where = ", ".join(p for p in (report.country, report.region) if p)
    tunnel = "full tunnel" if report.full_tunnel else "split tunnel"
    lines = [
        f"state:      {report.state}",
        f"node:       {report.node_id}" + (f" ({where})" if where else ""),
        f"mode:       {report.mode}" + (f" ({report.path_why})" if report.path_why else ""),
        f"address:    {report.address} on {report.interface} ({tunnel}, "
        f"kill switch {'on' if report.kill_switch else 'off'})",
        f"dns:        {', '.join(report.dns) or '-'}",
        f"handshake:  {'never' if age is None else f'{age:.0f} s ago'}",
        f"transfer:   {_bytes(report.rx_bytes)} received, {_bytes(report.tx_bytes)} sent",
        f"latency:    tunnel {_ms(report.tunnel_rtt_ms)}, server {_ms(report.server_rtt_ms)}",
        f"session:    {report.session_id} via {report.server_url}",
    ]
    if report.reroutes or report.relay_reconnects:
        lines.append(
            f"recovered:  {report.reroutes} new route(s), "
            f"{report.relay_reconnects} relay reconnect(s)"
        )
    if report.public_endpoint:
        lines.append(f"public:     {report.public_endpoint} (as the server sees us)")
    if report.last_error:
        lines.append(f"last issue: {report.last_error}")
    return "\n".join(lines)
