"""The connect flow: route → WireGuard → routing → DNS → kill switch → a handshake on a path.

Order matters and is the same on every connect:

1. the device key (created once, 0600) and ``POST /v1/routes``;
2. the WireGuard interface with the route's address and MTU, and its fwmark (so its own UDP
   packets, and our control sockets that carry the same mark, bypass the tunnel);
3. routing: full tunnel (wg-quick's policy routing) or split tunnel for the given prefixes;
4. DNS: the node's resolver, through the tunnel;
5. the kill switch (full tunnel by default) — before any user traffic can take another way;
6. the peer on a path and a wait for the handshake. ``auto`` tries direct for a few seconds
   when the node has an endpoint, then the relay; ``direct``/``relay`` try only that one.

Every host change goes through the OS layer and the journal (see :class:`TunnelHost`); the
caller runs :meth:`Connector.connect` inside a journal transaction, so a failure at any step
rolls back everything already done and the host is as it was.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import urlsplit

from higgs.client.server_api import ApiError, ServerApi
from higgs.client.settings import ClientSettings
from higgs.client.timings import PhaseTimer
from higgs.common.errors import HiggsError
from higgs.common.keys import PrivateKey
from higgs.protocol.api import RouteResponse, UdpRelayPath, WireGuardConfig, parse_endpoint
from higgs.transport.relay_rtt import measure_all

__all__ = [
    "ConnectError",
    "Connector",
    "Endpoint",
    "PathMode",
    "PeerStats",
    "Pinger",
    "RelayPath",
    "RelayPathFactory",
    "Tunnel",
    "TunnelHost",
    "tunnel_addresses",
]

log = logging.getLogger(__name__)

# A first handshake initiation can be lost on the way: the node has not added the peer yet
# (the server's push is in flight), a relay has not learnt the node's leg of the session yet.
# WireGuard itself retries only after 5 s (REKEY_TIMEOUT); a fresh peer sends a new initiation
# at once, so the connect sets the peer again after these waits (0.5, 1.5, 3.5 s into the
# wait, then every 2 s). On a path with an RTT above half a second the first retry may cut
# off an answer in flight; the next one, a second later, then gets through.
HANDSHAKE_RETRIES_S = (0.5, 1.0, 2.0)

PathMode = Literal["direct", "udp_relay", "relay", "punched"]
"""``punched``: the UDP relay's session moved onto a hole-punched direct path (issue 12)."""


class ConnectError(HiggsError):
    """The tunnel could not be established; the message says which step failed and why."""


@dataclass(frozen=True)
class PeerStats:
    """The node peer as ``wg show dump`` reports it."""

    latest_handshake: float  # unix time; 0 = never
    rx_bytes: int
    tx_bytes: int
    endpoint: str | None

    def handshake_age(self, now: float | None = None) -> float | None:
        if not self.latest_handshake:
            return None
        return max(0.0, (time.time() if now is None else now) - self.latest_handshake)


class TunnelHost(Protocol):
    """The host side of the tunnel; every method changes the host through osnet + journal."""

    def create(
        self, private_key: PrivateKey, address: str, mtu: int, timer: PhaseTimer | None = None
    ) -> None: ...

    def reset_tunnel(self) -> None: ...

    def set_peer(
        self,
        public_key: str,
        endpoint: str,
        allowed_ips: Sequence[str],
        keepalive: int | None,
    ) -> None: ...

    def route(self, *, full: bool, prefixes: Sequence[str], exempt: Sequence[str] = ()) -> None: ...

    def set_dns(self, servers: Sequence[str]) -> None: ...

    def kill_switch(self, *, allow_endpoints: Sequence[Endpoint]) -> None: ...

    def peer_stats(self) -> PeerStats | None: ...


class RelayPath(Protocol):
    """A local UDP bridge joined to the session's relay WebSocket."""

    @property
    def local_endpoint(self) -> str: ...

    @property
    def closed_reason(self) -> str | None: ...

    @property
    def reconnects(self) -> int: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


RelayPathFactory = Callable[[RouteResponse], RelayPath]

Pinger = Callable[[str], Awaitable[float | None]]
"""One ICMP echo through the tunnel to an address: milliseconds, or None (no answer)."""


@dataclass
class Tunnel:
    """What is up right now: the route in use and the path its handshake went over."""

    route: RouteResponse
    mode: PathMode
    relay: RelayPath | None = None
    connected_at: float = field(default_factory=time.time)
    why: str = ""  # why this path (shown by `higgsvpn status`)
    path_since: float = 0.0  # unix time the current path came up; 0 = at connected_at

    def __post_init__(self) -> None:
        self.path_since = self.path_since or self.connected_at

    def change_path(self, mode: PathMode, why: str) -> None:
        """A path change while connected (relay → punched → relay ...), stamped for status."""
        self.mode, self.why, self.path_since = mode, why, time.time()

    @property
    def address(self) -> str:
        return tunnel_addresses(self.route.wireguard)


def tunnel_addresses(wg: WireGuardConfig) -> str:
    """The interface's addresses, wg-quick style: IPv4, and IPv6 when the node offers it."""
    return f"{wg.address}, {wg.address_v6}" if wg.address_v6 else wg.address


@dataclass(frozen=True, order=True)
class Endpoint:
    """Somewhere the client must still reach outside the tunnel (server, relay, node)."""

    host: str
    port: int
    protocol: Literal["tcp", "udp"]


_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def _url_endpoint(url: str) -> Endpoint:
    parsed = urlsplit(url)
    port = parsed.port or _DEFAULT_PORTS.get(parsed.scheme, 443)
    return Endpoint(parsed.hostname or "", port, "tcp")


class Connector:
    """Runs the connect flow against a server (REST) and a host (osnet)."""

    def __init__(
        self,
        settings: ClientSettings,
        api: ServerApi,
        key: PrivateKey,
        host: TunnelHost,
        relay_factory: RelayPathFactory,
        pinger: Pinger | None = None,
    ) -> None:
        self.settings = settings
        self.api = api
        self.key = key
        self.host = host
        self.relay_factory = relay_factory
        self.pinger = pinger
        self._resolved: dict[str, list[str]] = {}
        # Where the latest connect (or new route) spent its time; `connect --json` shows it.
        self.timer = PhaseTimer()

    # --- the first connect -------------------------------------------------------------------

    async def request_route(self) -> RouteResponse:
        s = self.settings
        rtts = None
        if s.mode != "direct":
            with self.timer.phase("relay_rtt"):
                rtts = await self._relay_rtts()
        with self.timer.phase("route_request"):
            route = await self.api.route(
                self.key.public_b64(),
                node_id=s.node_id,
                country=s.country,
                mode=s.mode,
                relay_rtt_ms=rtts,
            )
        if s.mode == "direct" and route.direct is None:
            raise ConnectError(
                f"node {route.node.node_id} has no direct endpoint; use --mode relay or auto"
            )
        if s.mode == "relay" and route.relay is None:
            raise ConnectError("the server offered no relay for this route; use --mode direct")
        if route.direct is None and route.relay is None:
            raise ConnectError("the server's route has neither a direct nor a relay path")
        return route

    async def _relay_rtts(self) -> dict[str, float]:
        """Our RTT to each relay host, for the server's choice of the session's relay; none
        when the server has no relay hosts (or is older than them)."""
        try:
            listing = await self.api.relays()
        except ApiError as exc:
            log.debug("no relay hosts to time: %s", exc)
            return {}
        # On a reroute the kill switch is in place: the probe carries WireGuard's fwmark.
        fwmark = getattr(self.host, "fwmark", None)
        return await measure_all(
            ((r.address, r.probe_port) for r in listing.relays),
            fwmark=fwmark if isinstance(fwmark, int) else None,
        )

    def _allowed_ips(self, route: RouteResponse) -> list[str]:
        if self.settings.full_tunnel:
            return list(route.wireguard.allowed_ips)
        # Split tunnel: only the chosen prefixes, plus the node's resolver (DNS goes through).
        extra = [f"{d}/32" if ":" not in d else f"{d}/128" for d in route.wireguard.dns]
        return [str(p) for p in self.settings.split] + extra

    async def _allow_endpoints(self, route: RouteResponse) -> list[Endpoint]:
        out = set(await self._control_endpoints(route))
        for path in (route.direct, route.udp_relay):
            if path is not None:
                host, port = parse_endpoint(path.endpoint)
                out.update(Endpoint(ip, port, "udp") for ip in await self._resolve(host))
        return sorted(out)

    async def connect(self, timer: PhaseTimer | None = None) -> Tunnel:
        """Brings everything up; the caller's journal transaction rolls back on failure.
        ``timer``: where the phases are recorded (the daemon's, started before this)."""
        self.timer = timer or PhaseTimer()
        route = await self.request_route()
        wg = route.wireguard
        log.info(
            "route: session %s, node %s, address %s",
            route.session_id,
            route.node.node_id,
            tunnel_addresses(wg),
        )
        with self.timer.phase("resolve"):
            exempt = await self._control_addresses(route)
        await self._build(route, exempt)
        return await self.bring_up_path(route)

    async def _build(self, route: RouteResponse, exempt: list[str]) -> None:
        """Interface, routes, DNS, kill switch. The host's calls block (commands, netlink, up
        to 10 s for wireguard-go's socket): each runs in a thread, never on the event loop."""
        wg = route.wireguard
        timer = self.timer
        # The host splits its part into interface, wireguard_config and addresses.
        await asyncio.to_thread(self.host.create, self.key, tunnel_addresses(wg), wg.mtu, timer)
        allowed = self._allowed_ips(route)
        with timer.phase("routing"):
            await asyncio.to_thread(
                self.host.route, full=self.settings.full_tunnel, prefixes=allowed, exempt=exempt
            )
        if wg.dns:
            with timer.phase("dns"):
                await asyncio.to_thread(self.host.set_dns, wg.dns)
        if self.settings.kill_switch_enabled:
            with timer.phase("kill_switch"):
                endpoints = await self._allow_endpoints(route)
                await asyncio.to_thread(self.host.kill_switch, allow_endpoints=endpoints)

    async def _resolve(self, host: str) -> list[str]:
        """IPv4 addresses of a control host, resolved before the tunnel is up (while the
        system resolver still works) and remembered for later route changes. An address
        literal is itself, IPv6 too (a UDP relay's ``[v6]:port``)."""
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        if host not in self._resolved:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, None, family=socket.AF_INET)
            except OSError as exc:
                raise ConnectError(f"cannot resolve {host}: {exc}") from exc
            self._resolved[host] = sorted({str(info[4][0]) for info in infos})
        return self._resolved[host]

    async def _control_endpoints(self, route: RouteResponse) -> list[Endpoint]:
        """The server's and relay's TCP endpoints, by address."""
        urls = [self.settings.server_url] + ([route.relay.url] if route.relay else [])
        out: set[Endpoint] = set()
        for url in urls:
            ep = _url_endpoint(url)
            out.update(Endpoint(ip, ep.port, "tcp") for ip in await self._resolve(ep.host))
        return sorted(out)

    async def _control_addresses(self, route: RouteResponse) -> list[str]:
        return sorted({ep.host for ep in await self._control_endpoints(route)})

    # --- paths -------------------------------------------------------------------------------

    async def bring_up_path(self, route: RouteResponse) -> Tunnel:
        """Sets the peer on the best path of ``route`` and waits for a handshake."""
        mode = self.settings.mode
        errors: list[str] = []
        if mode in ("auto", "direct") and route.direct is not None:
            budget = (
                self.settings.direct_timeout_s
                if mode == "auto" and route.relay is not None
                else self.settings.handshake_timeout_s
            )
            await self._set_peer(route, route.direct.endpoint)
            if await self._timed_handshake("direct", budget, route, route.direct.endpoint):
                await self._first_packet(route)
                return Tunnel(route, "direct", why="the node has a verified endpoint")
            errors.append(
                f"no WireGuard handshake with {route.direct.endpoint} (direct) in {budget:g}s"
            )
            if mode == "direct":
                raise ConnectError(errors[-1] + "; is the node's port forwarded?")
            log.info("direct path did not answer in %gs; trying the relay", budget)
        # --- the UDP relay (issue 11): before the WebSocket relay, which it outruns ---
        if mode in ("auto", "relay") and route.udp_relay is not None:
            endpoint = route.udp_relay.endpoint
            budget = (
                self.settings.udp_relay_timeout_s
                if route.relay is not None
                else self.settings.handshake_timeout_s
            )
            await self._set_peer(route, endpoint)
            if await self._timed_handshake("udp_relay", budget, route, endpoint):
                await self._first_packet(route)
                why = "; ".join(errors) if errors else "the node has no verified endpoint"
                return Tunnel(route, "udp_relay", why=why)
            errors.append(f"no WireGuard handshake through the UDP relay {endpoint} in {budget:g}s")
            log.info("UDP relay did not answer in %gs; trying the WebSocket relay", budget)
        # ---
        if route.relay is None:
            raise ConnectError("; ".join(errors) or "no usable path")
        relay = self.relay_factory(route)
        try:
            with self.timer.phase("relay_start"):
                await relay.start()
            await self._set_peer(route, relay.local_endpoint)
            wait_s = self.settings.handshake_timeout_s
            if await self._timed_handshake("relay", wait_s, route, relay.local_endpoint, relay):
                await self._first_packet(route)
                why = "; ".join(errors) if errors else "no UDP path was offered"
                return Tunnel(route, "relay", relay, why=why)
        except BaseException:
            await relay.close()
            raise
        reason = relay.closed_reason
        await relay.close()
        errors.append(
            f"no WireGuard handshake through the relay in {self.settings.handshake_timeout_s:g}s"
            + (f" (relay: {reason})" if reason else " (is the node online?)")
        )
        raise ConnectError("; ".join(errors))

    async def move_relay(self, tunnel: Tunnel, endpoint: str) -> None:
        """The server moved the session to another relay host (its first one died): the
        same session, peer and keys, on the new relay endpoint (both legs are re-pinned there
        by the server; the node was told in a ``sync``)."""
        route = tunnel.route.model_copy(update={"udp_relay": UdpRelayPath(endpoint=endpoint)})
        if self.settings.kill_switch_enabled:
            endpoints = await self._allow_endpoints(route)
            await asyncio.to_thread(self.host.kill_switch, allow_endpoints=endpoints)
        tunnel.route = route
        if tunnel.mode == "udp_relay":
            await self._set_peer(route, endpoint)
            tunnel.why = f"on the UDP relay {endpoint} (the previous relay host went down)"

    async def move_ws_relay(self, tunnel: Tunnel, url: str) -> None:
        """The server moved the session to another relay host whose hub now carries its
        WebSocket legs: the same session, token and channel on a link to the new hub; on the
        WebSocket path the peer moves to the new link's local bridge."""
        if tunnel.route.relay is None:
            return
        relay = tunnel.route.relay.model_copy(update={"url": url})
        route = tunnel.route.model_copy(update={"relay": relay})
        if self.settings.kill_switch_enabled:
            endpoints = await self._allow_endpoints(route)
            await asyncio.to_thread(self.host.kill_switch, allow_endpoints=endpoints)
        tunnel.route = route
        if tunnel.mode != "relay" or tunnel.relay is None:
            return
        old, new = tunnel.relay, self.relay_factory(route)
        await new.start()
        await self._set_peer(route, new.local_endpoint)
        tunnel.relay = new
        tunnel.why = f"on the WebSocket relay {url} (the previous relay host went down)"
        await old.close()

    async def _set_peer(
        self, route: RouteResponse, endpoint: str, *, keepalive: int | None = None
    ) -> None:
        """The node as peer on ``endpoint`` (a fresh peer: an initiation at once);
        ``keepalive``: instead of the route's."""
        wg = route.wireguard
        with self.timer.phase("peer"):
            await asyncio.to_thread(
                self.host.set_peer,
                wg.node_public_key,
                endpoint,
                self._allowed_ips(route),
                keepalive or wg.persistent_keepalive,
            )

    async def _timed_handshake(
        self,
        path: PathMode,
        wait_s: float,
        route: RouteResponse,
        endpoint: str,
        relay: RelayPath | None = None,
    ) -> bool:
        async def again() -> None:
            log.debug("no handshake on the %s path yet: a new initiation", path)
            await self._set_peer(route, endpoint)

        with self.timer.phase(f"handshake_{path}"):
            return await self.wait_handshake(wait_s, relay=relay, retry=again)

    async def _first_packet(self, route: RouteResponse) -> None:
        """One echo to the node's resolver address through the tunnel: the first packet
        through, timed. Best effort: the handshake already proved the path; a node that does
        not answer the echo costs the pinger's wait (the daemon's FIRST_PACKET_WAIT_S)."""
        if self.pinger is None or not route.wireguard.dns:
            return
        with self.timer.phase("first_packet"):
            rtt = await self.pinger(route.wireguard.dns[0])
        if rtt is None:
            log.info("no echo from %s through the new tunnel", route.wireguard.dns[0])

    async def wait_handshake(
        self,
        wait_s: float,
        *,
        relay: RelayPath | None = None,
        retry: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """True once the peer reports a handshake newer than the start of this wait.
        ``retry``: called after each of :data:`HANDSHAKE_RETRIES_S` (then every last one)
        without a handshake (sets the peer again: a new initiation at once)."""
        # Ages, not wall times: the clock may step meanwhile (osnet.handshakes); wg reports
        # whole seconds.
        started = time.monotonic() - 1
        deadline = time.monotonic() + wait_s
        retries = iter(HANDSHAKE_RETRIES_S)
        pause = next(retries)
        next_retry = time.monotonic() + pause
        while time.monotonic() < deadline:
            stats = await asyncio.to_thread(self.host.peer_stats)
            age = stats.handshake_age() if stats is not None else None
            if age is not None and age <= time.monotonic() - started:
                return True
            if relay is not None and relay.closed_reason is not None:
                return False
            if retry is not None and time.monotonic() >= next_retry:
                await retry()
                pause = next(retries, pause)
                next_retry = time.monotonic() + pause
            # A handshake takes one round trip; each poll is one `wg show` (a process).
            await asyncio.sleep(0.1)
        return False

    # --- changing route while connected (server lost the session, node gone) -----------------

    async def switch_route(self, current: Tunnel) -> Tunnel:
        """Takes a new route and rebuilds the tunnel on it; the kill switch stays in place
        throughout, so nothing leaves outside the tunnel meanwhile."""
        self.timer = PhaseTimer()
        route = await self.request_route()
        if current.relay is not None:
            await current.relay.close()
        with self.timer.phase("resolve"):
            exempt = await self._control_addresses(route)
        with self.timer.phase("reset_tunnel"):
            await asyncio.to_thread(self.host.reset_tunnel)
        await self._build(route, exempt)
        return await self.bring_up_path(route)
