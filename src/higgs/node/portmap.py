"""Port mapping on the home router: which methods to try, when to renew, and the loop that
keeps the WireGuard port mapped while the node runs.

Per round, the methods of the ``port_mapping`` setting are tried in order (``auto``: PCP,
NAT-PMP, UPnP-IGD) against the default-route gateway; the first that grants a mapping wins.
Each attempt is journaled *before* the router is asked (the undo deletes the mapping), so a
run killed at any point leaves nothing the next start or ``cleanup`` cannot remove. A mapping
is renewed, with the same method (and PCP nonce, UPnP device), at half its lifetime (RFC 6886
§3.3); a failed renewal starts a new round. When no method works the reasons are kept for
``status``/``diagnose`` and the round is retried with backoff. Stop removes the mapping.

Seam for hole punching (issue 12 items 3-4): :attr:`PortMapper.mapping` is the node's
router-granted public endpoint; a punching module reads it rather than asking the router again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from higgs.osnet.discovery import Uplink, internet_v6
from higgs.osnet.journal import Entry, Journal
from higgs.osnet.portmap import METHODS, Method, PortMapError, PortMapping
from higgs.osnet.portmap import udp as pm_udp
from higgs.osnet.portmap import upnp as pm_upnp
from higgs.osnet.portmap.undo import portmap_delete

__all__ = [
    "ATTEMPT_TIMEOUT_S",
    "PortMapSetting",
    "PortMapper",
    "methods_for",
    "renew_delay",
    "retry_delay",
]

log = logging.getLogger(__name__)

PortMapSetting = Literal["auto", "pcp", "natpmp", "upnp", "off"]

ATTEMPT_TIMEOUT_S = 15.0
"""One method's whole exchange (UPnP: SSDP, description, SOAP) at most."""
MIN_RENEW_S = 1.0
MAX_RENEW_S = 3600.0
RETRY_FIRST_S = 30.0
RETRY_MAX_S = 600.0


def methods_for(setting: PortMapSetting) -> tuple[Method, ...]:
    if setting == "off":
        return ()
    if setting == "auto":
        return METHODS
    return (Method(setting),)


def renew_delay(lifetime_s: float) -> float:
    """Seconds until a mapping granted for ``lifetime_s`` is renewed: half its lifetime."""
    return min(max(lifetime_s / 2, MIN_RENEW_S), MAX_RENEW_S)


def retry_delay(failed_rounds: int) -> float:
    """Seconds until the next round after ``failed_rounds`` rounds that all failed."""
    return min(RETRY_FIRST_S * 2.0 ** max(failed_rounds - 1, 0), RETRY_MAX_S)


@dataclass(frozen=True)
class Attempt:
    method: Method
    reason: str
    detail: str


class PortMapper:
    """Keeps the WireGuard UDP port mapped on the gateway of ``uplink()``."""

    def __init__(
        self,
        setting: PortMapSetting,
        *,
        journal: Journal,
        port: int,
        lifetime_s: int,
        uplink: Callable[[], Uplink | None],
        on_change: Callable[[PortMapping | None], Awaitable[None]] | None = None,
        uplink6: Callable[[], Uplink | None] | None = None,
    ) -> None:
        self.setting = setting
        self.methods = methods_for(setting)
        self.journal = journal
        self.port = port
        self.lifetime_s = lifetime_s
        self._uplink = uplink
        self._on_change = on_change
        self.mapping: PortMapping | None = None
        self._entry: Entry | None = None
        self.attempts: list[Attempt] = []  # the last round's failures
        self.failed_rounds = 0
        self.next_at: float | None = None  # monotonic time of the next renewal/round
        self.verified: bool | None = None  # set by the agent from the server's answer
        # IPv6: a pinhole in the router's firewall (no NAT) for the node's global address, by
        # PCP (a MAP) or UPnP (WANIPv6FirewallControl). Best effort: reported, never required.
        self._uplink6 = uplink6
        self.pinhole: PortMapping | None = None
        self._pinhole_entry: Entry | None = None
        self.pinhole_why: str | None = None

    @property
    def state(self) -> str:
        if not self.methods:
            return "off"
        if self.mapping is not None:
            return "mapped"
        return "failed" if self.attempts else "trying"

    def status(self) -> dict[str, Any]:
        m = self.mapping
        now = time.monotonic()
        return {
            "setting": self.setting,
            "state": self.state,
            "method": m.method.value if m else None,
            "external_endpoint": m.endpoint if m else None,
            "gateway": m.gateway if m else None,
            "lifetime_s": m.lifetime_s if m else None,
            "next_in_s": round(self.next_at - now, 1) if self.next_at is not None else None,
            "verified": self.verified,
            "attempts": [
                {"method": a.method.value, "reason": a.reason, "detail": a.detail}
                for a in self.attempts
            ],
            "ipv6_pinhole": {
                "endpoint": self.pinhole.endpoint if self.pinhole else None,
                "method": self.pinhole.method.value if self.pinhole else None,
                "reason": self.pinhole_why,
            },
        }

    def why_none(self) -> str | None:
        """One line saying why there is no mapping (None when there is one, or it is off)."""
        if self.mapping is not None or not self.methods:
            return None
        if not self.attempts:
            return "not tried yet"
        return "; ".join(f"{a.method.value}: {a.reason} ({a.detail})" for a in self.attempts)

    # ---- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        if not self.methods:
            return
        while True:
            await self.round()
            await self.pinhole_round()
            if self.mapping is not None:
                delay = renew_delay(self.mapping.lifetime_s)
            else:
                delay = retry_delay(self.failed_rounds)
            if self.pinhole is not None:
                delay = min(delay, renew_delay(self.pinhole.lifetime_s))
            self.next_at = time.monotonic() + delay
            await asyncio.sleep(delay)

    async def round(self) -> PortMapping | None:
        """Renews the current mapping or makes a new one; returns what holds now."""
        before = self.mapping
        uplink = self._uplink()
        gateway = uplink.gateway if uplink else None
        address = uplink.address if uplink else None
        internal_ip = str(address.ip) if address is not None and address.version == 4 else None
        if before is not None and (before.gateway, before.internal_ip) != (gateway, internal_ip):
            log.info("the gateway changed; removing the old port mapping")
            await self.remove()
        current = self.mapping
        attempts: list[Attempt] = []
        result: PortMapping | None = None
        if gateway is None or internal_ip is None or ":" in gateway:
            attempts = [
                Attempt(m, "no_gateway", "no IPv4 default route with a gateway")
                for m in self.methods
            ]
        else:
            order = self.methods
            if current is not None:  # renew with the method that worked first
                order = (current.method, *(m for m in self.methods if m is not current.method))
            for method in order:
                try:
                    result = await asyncio.wait_for(
                        self._try(method, gateway, internal_ip, current), ATTEMPT_TIMEOUT_S
                    )
                    break
                except PortMapError as exc:
                    attempts.append(Attempt(method, exc.reason, exc.detail))
                except TimeoutError:
                    attempts.append(
                        Attempt(method, "timeout", f"no result within {ATTEMPT_TIMEOUT_S:g} s")
                    )
                if current is not None and method is current.method:
                    await self.remove()  # the renewal failed: start over with a clean slate
                    current = None
        self.attempts = attempts
        self.mapping = result
        if result is None:
            self.failed_rounds += 1
            log.warning("no port mapping on the router", extra={"why": self.why_none()})
        else:
            self.failed_rounds = 0
            if before is None or before.endpoint != result.endpoint:
                log.info(
                    "port mapped on the router",
                    extra={"method": result.method.value, "endpoint": result.endpoint},
                )
        if self._on_change is not None and (
            (before is None) != (result is None)
            or (before is not None and result is not None and before.endpoint != result.endpoint)
        ):
            self.verified = None
            await self._on_change(result)
        return result

    async def _try(
        self, method: Method, gateway: str, internal_ip: str, current: PortMapping | None
    ) -> PortMapping:
        renewing = current is not None and current.method is method and self._entry is not None
        if method is Method.PCP:
            nonce = bytes.fromhex(current.nonce) if renewing and current else pm_udp.pcp_new_nonce()
            undo = portmap_delete(method, gateway, internal_ip, self.port, nonce=nonce.hex())
            return await self._journaled(
                renewing,
                undo,
                lambda: pm_udp.pcp_map(gateway, internal_ip, self.port, self.lifetime_s, nonce),
            )
        if method is Method.NATPMP:
            undo = portmap_delete(method, gateway, internal_ip, self.port)
            return await self._journaled(
                renewing,
                undo,
                lambda: pm_udp.natpmp_map(gateway, internal_ip, self.port, self.lifetime_s),
            )
        location = current.location if renewing and current else await pm_upnp.discover(gateway)
        undo = portmap_delete(
            method, gateway, internal_ip, self.port, external_port=self.port, location=location
        )
        return await self._journaled(
            renewing,
            undo,
            lambda: pm_upnp.upnp_map(gateway, internal_ip, self.port, self.lifetime_s, location),
        )

    async def _journaled(
        self, renewing: bool, undo: dict[str, Any], ask: Callable[[], Awaitable[PortMapping]]
    ) -> PortMapping:
        """Write ahead, then ask; a refusal means the router holds nothing: forget the entry."""
        if not renewing:
            self._entry = self.journal.record(
                f"port mapping ({undo['method']}) on the router", undo
            )
        entry = self._entry
        try:
            return await ask()
        except PortMapError:
            if not renewing and entry is not None:
                self.journal.forget(entry)
                self._entry = None
            raise
        except BaseException:
            # Cancelled mid-exchange: the router may have granted it. The entry stays in the
            # journal, whose undo_all at stop (or the next start) removes it.
            self._entry = None
            raise

    def _pinhole_methods(self) -> tuple[Method, ...]:
        """PCP (a MAP for an IPv6 address is a pinhole) and UPnP (WANIPv6FirewallControl),
        in the setting's order; NAT-PMP has no IPv6."""
        return tuple(m for m in self.methods if m in (Method.PCP, Method.UPNP))

    async def pinhole_round(self) -> PortMapping | None:
        """Opens or renews the IPv6 pinhole: the method that opened it first, else each of
        :meth:`_pinhole_methods` in turn; the reasons of all that failed are kept."""
        methods = self._pinhole_methods()
        if not methods or self._uplink6 is None:
            return None
        up6 = self._uplink6()
        addrs = internet_v6(up6.addresses) if up6 is not None else ()
        if up6 is None or not up6.gateway or not addrs:
            await self._remove_pinhole()
            self.pinhole_why = "no IPv6 default route with an internet address"
            return None
        gateway = up6.gateway
        if ipaddress.IPv6Address(gateway).is_link_local:
            gateway = f"{gateway}%{up6.name}"
        ip6 = str(addrs[0].ip)
        old = self.pinhole
        renewing = (
            old is not None
            and self._pinhole_entry is not None
            and (old.gateway, old.internal_ip) == (gateway, ip6)
        )
        if old is not None and not renewing:
            await self._remove_pinhole()
            old = None
        if old is not None:
            methods = (old.method, *(m for m in methods if m is not old.method))
        why: list[str] = []
        for method in methods:
            again = old is not None and method is old.method
            try:
                self.pinhole = await asyncio.wait_for(
                    self._open_pinhole(method, gateway, up6.name, ip6, old if again else None),
                    ATTEMPT_TIMEOUT_S,
                )
            except (PortMapError, TimeoutError) as exc:
                why.append(
                    f"{method.value}: {exc.reason} ({exc.detail})"
                    if isinstance(exc, PortMapError)
                    else f"{method.value}: timeout"
                )
                if again or isinstance(exc, TimeoutError):
                    # A failed renewal starts over; a timeout may have left a pinhole the
                    # router granted after all: its journaled undo closes it either way.
                    await self._remove_pinhole()
                    old = None
                continue
            self.pinhole_why = None
            if old is None or old.endpoint != self.pinhole.endpoint:
                log.info(
                    "IPv6 pinhole open on the router",
                    extra={"endpoint": self.pinhole.endpoint, "method": method.value},
                )
            return self.pinhole
        self.pinhole = None
        self.pinhole_why = "; ".join(why)
        return None

    async def _open_pinhole(
        self, method: Method, gateway: str, interface: str, ip6: str, current: PortMapping | None
    ) -> PortMapping:
        """One method's pinhole, journaled before the router is asked (its undo closes it);
        a refusal forgets the entry."""
        if current is None:
            if method is Method.PCP:
                nonce = pm_udp.pcp_new_nonce()
                undo = portmap_delete(method, gateway, ip6, self.port, nonce=nonce.hex())
            else:
                location = await pm_upnp.discover(gateway, interface)
                undo = portmap_delete(
                    method, gateway, ip6, self.port, location=location, pinhole=True
                )
            self._pinhole_entry = self.journal.record(
                f"IPv6 pinhole ({method.value}) on the router", undo
            )
        entry = self._pinhole_entry
        assert entry is not None
        try:
            if method is Method.PCP:
                nonce = bytes.fromhex(current.nonce if current else entry.undo["nonce"])
                return await pm_udp.pcp_map(gateway, ip6, self.port, self.lifetime_s, nonce)
            opened = await pm_upnp.upnp_pinhole(
                gateway,
                ip6,
                self.port,
                self.lifetime_s,
                location=entry.undo["location"],
                pinhole_id=current.pinhole_id if current else None,
            )
        except PortMapError:
            if current is None:
                self.journal.forget(entry)
                self._pinhole_entry = None
            raise
        if current is None:  # the router's id for it: the undo deletes exactly that one
            undo = portmap_delete(
                method, gateway, ip6, self.port, location=opened.location, pinhole=True,
                pinhole_id=opened.pinhole_id,
            )  # fmt: skip
            self._pinhole_entry = self.journal.amend(entry, undo)
        return opened

    async def _remove_pinhole(self) -> None:
        entry, self._pinhole_entry = self._pinhole_entry, None
        self.pinhole = None
        if entry is not None:
            await asyncio.to_thread(self.journal.undo, entry)

    async def remove(self) -> None:
        """Deletes the mapping on the router (the journal's undo) and forgets it."""
        entry, self._entry = self._entry, None
        self.mapping = None
        if entry is not None:
            await asyncio.to_thread(self.journal.undo, entry)

    async def stop(self) -> None:
        try:
            await self._remove_pinhole()
        finally:
            await self.remove()
