"""What a port mapping on the home router is, as data (shared by the three methods)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from higgs.osnet.errors import OsnetError

__all__ = ["METHODS", "Method", "PortMapError", "PortMapping"]


class Method(enum.StrEnum):
    PCP = "pcp"
    NATPMP = "natpmp"
    UPNP = "upnp"


METHODS: tuple[Method, ...] = (Method.PCP, Method.NATPMP, Method.UPNP)
"""The order ``auto`` tries them in: PCP is the newest and the only one that also maps IPv6;
NAT-PMP is its predecessor on the same port; UPnP-IGD is the slowest (SSDP, HTTP, SOAP)."""


class PortMapError(OsnetError):
    """The router gave no mapping; ``reason`` is a short stable name for status and counters
    (``no_answer``, ``port_unreachable``, ``refused``, ``bad_reply``, ``no_device`` …),
    the message says what happened."""

    def __init__(self, method: Method, reason: str, detail: str) -> None:
        super().__init__(f"{method.value}: {reason}: {detail}")
        self.method = method
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PortMapping:
    """A UDP mapping ``external_ip:external_port`` → ``internal_ip:internal_port`` that the
    router granted for ``lifetime_s`` seconds from ``granted_at`` (monotonic clock)."""

    method: Method
    gateway: str
    internal_ip: str
    internal_port: int
    external_ip: str
    external_port: int
    lifetime_s: int
    granted_at: float
    nonce: str = ""  # PCP: hex of the 12-byte nonce (renewals and the delete must reuse it)
    location: str = ""  # UPnP: the device description URL
    pinhole_id: int | None = None  # UPnP IPv6 pinhole: the router's UniqueID for it

    @property
    def endpoint(self) -> str:
        if ":" in self.external_ip:
            return f"[{self.external_ip}]:{self.external_port}"
        return f"{self.external_ip}:{self.external_port}"
