"""Wiring bosonserver together: database, services, relay hub, REST API, background tasks.

One process, one event loop: uvicorn serves the REST API (``--listen``) and the relay hub serves
its WebSocket listener (``--relay-listen``) side by side. :class:`BosonServer` is what
``bosonserver serve`` runs and what tests start (see :func:`running_server`)::

    async with running_server(settings) as server:
        httpx.get(server.api_url + "/healthz")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from pathlib import Path
from typing import Protocol, cast
from urllib.parse import urlsplit

import uvicorn
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from higgs.common.errors import HiggsError
from higgs.common.retrylog import every
from higgs.common.tls import harden, server_context
from higgs.server.api.app import create_app
from higgs.server.api.deps import ApiContext
from higgs.server.api.ratelimit import RateLimiter
from higgs.server.cluster.coordinator import CLUSTER_CACHE_TTL_S, Cluster, default_instance_id
from higgs.server.cluster.hub import ClusterEvents, ClusterHub, LocalHub
from higgs.server.config import ServerSettings, split_listen
from higgs.server.metrics import ServerMetrics
from higgs.server.relay.hub import RelayHubServer
from higgs.server.relay.ports import RelayEvents, RelayHub
from higgs.server.services.device_roaming import DeviceRoaming
from higgs.server.services.devices import DeviceService
from higgs.server.services.events import ServerEvents
from higgs.server.services.identity import ADMIN_TOKEN_FILE, IdentityService
from higgs.server.services.keyproof import ChallengeService
from higgs.server.services.nodeview import NodeView, refresh_view
from higgs.server.services.punch import PunchService, PunchTimers
from higgs.server.services.registry import RegistryService
from higgs.server.services.relay_failover import RelayFailover
from higgs.server.services.sessions import SessionService
from higgs.server.services.traffic import TrafficSeries
from higgs.server.services.usage import UsageService
from higgs.server.store.db import Database
from higgs.server.store.open import open_database

__all__ = [
    "BosonServer",
    "HubFactory",
    "ServedHub",
    "relay_hub_factory",
    "running_server",
    "server_ssl_context",
]

log = logging.getLogger(__name__)

# The node view is kept current by this process's own events; reloading it from the database
# only catches what they missed, so it need not run at every sweep (1,000 rows each time).
VIEW_RELOAD_S = 60.0
TRAFFIC_SAMPLE_S = 10.0
STEER_EVERY_S = 2.0


class ServedHub(RelayHub, Protocol):
    """A relay hub that also owns its listener (:class:`RelayHubServer`)."""

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        """Starts listening (``port`` may be 0)."""
        ...

    @property
    def port(self) -> int:
        """The bound port."""
        ...

    async def stop(self) -> None:
        """Closes every link (1001 going away) and the listener."""
        ...


HubFactory = Callable[[RelayEvents, CollectorRegistry], ServedHub]


def relay_hub_factory(settings: ServerSettings) -> HubFactory:
    """The production hub, with the timers from the settings."""

    def factory(events: RelayEvents, registry: CollectorRegistry) -> ServedHub:
        return RelayHubServer(
            events,
            registry,
            ping_interval_s=settings.relay_ping_interval_s,
            dead_after_s=settings.relay_dead_after_s,
            heartbeat_interval_s=settings.heartbeat_interval_s,
        )

    return factory


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    try:
        return server_context(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise HiggsError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from exc


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the server as a whole handles SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise HiggsError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(512)
    sock.setblocking(False)
    return sock


class BosonServer:
    def __init__(
        self,
        settings: ServerSettings,
        hub_factory: HubFactory | None = None,
        *,
        collectors: Sequence[Collector] = (),
        on_leased: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self._on_leased = on_leased
        self._hub_factory = hub_factory or relay_hub_factory(settings)
        self.metrics = ServerMetrics()
        # Read-only stats of what runs beside the server (the embedded UDP relay's): the
        # composition root hands them in; the server never imports what produces them.
        for collector in collectors:
            self.metrics.registry.register(collector)
        self.new_admin_token: str | None = None  # set when this start created it
        self.api_url = ""
        self.relay_base = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._uvicorn: _EmbeddedUvicorn | None = None
        self._db: Database | None = None
        self._hub: ServedHub | None = None
        self.ctx: ApiContext | None = None
        self._cluster: Cluster | None = None

    @property
    def hub(self) -> ServedHub:
        assert self._hub is not None, "server not started"
        return self._hub

    @property
    def admin_token_path(self) -> Path:
        return self.settings.data_dir / ADMIN_TOKEN_FILE

    async def start(self) -> None:
        self._db = db = await open_database(self.settings, auto_migrate=True)
        try:
            await self._start(db)
        except BaseException:
            await self.stop()
            raise

    async def _start(self, db: Database) -> None:
        s = self.settings
        # Scale-out (docs/scaleout.md): no instance may trust a cached credential for long,
        # since a revocation elsewhere reaches it by the bus, which may lose it.
        cache_ttl_s = min(s.auth_cache_ttl_s, CLUSTER_CACHE_TTL_S) if s.bus else s.auth_cache_ttl_s
        identity = IdentityService(db, cache_ttl_s=cache_ttl_s)
        s.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.new_admin_token = await identity.ensure_admin_token(s.data_dir)
        tls = server_ssl_context(s.tls_cert, s.tls_key) if s.tls_cert and s.tls_key else None

        events = ServerEvents(self.metrics)
        if s.bus:
            self._hub = hub = await self._cluster_hub(db, events)
        else:
            self._hub = hub = self._hub_factory(events, self.metrics.registry)
        # One view of the nodes, kept current by the registry and the sessions, read by routing.
        nodes = NodeView()
        sessions = SessionService(db, hub, nodes, s, self.metrics)
        if self._on_leased is not None:  # the embedded relay opens a new port at once
            sessions.udp_leases.on_leased = self._on_leased
        registry = RegistryService(db, hub, s, self.metrics, nodes, sessions, identity)
        # Instances of one deployment share the key through the database (docs/scaleout.md).
        registry.challenges = (
            await ChallengeService.shared(db, s.data_dir, required=s.require_key_proof)
            if s.bus
            else ChallengeService.load(s.data_dir, required=s.require_key_proof)
        )
        usage = registry.usage = UsageService(db, sessions)  # issue 15: usage and quotas
        events.bind(registry, sessions, usage)

        # The links' credentials are in the hub before its listener opens: a node or client
        # that reconnects the moment a restarted server listens must not get 401 (final for
        # its link) for a token that was only not loaded yet.
        allowed = await registry.reload()
        await refresh_view(nodes, db)
        open_sessions = await sessions.reload()
        log.info("state reloaded", extra={"nodes": allowed, "open_sessions": open_sessions})

        relay_host, relay_port = split_listen(s.relay_listen)
        await hub.start(relay_host, relay_port, tls)
        bound_relay = hub.port
        scheme = "wss" if tls else "ws"
        # Without --relay-url, the relay is on the public URL's host (if given), at its own port.
        public_host = urlsplit(s.public_url).hostname if s.public_url else None
        relay_host_for_url = _url_host(public_host or relay_host)
        self.relay_base = s.relay_url or f"{scheme}://{relay_host_for_url}:{bound_relay}"
        sessions.relay_base = registry.relay_base = self.relay_base
        if isinstance(hub, ClusterHub):
            hub.relay_base = s.instance_relay_url or self.relay_base
            sessions.relay_base_of = hub.relay_base_for
            if isinstance(hub.local, RelayHubServer):
                hub.local.held_elsewhere = hub.held_elsewhere

        self.ctx = ApiContext(
            settings=s,
            db=db,
            metrics=self.metrics,
            identity=identity,
            registry=registry,
            sessions=sessions,
            limiter=RateLimiter(s.rate_limit_per_s, s.rate_limit_burst),
            usage=usage,
            traffic=TrafficSeries(),
            devices=DeviceService(db, sessions, s, lambda: usage.session_bytes),
            punch=self._punch_service(db, hub, nodes),
        )
        events.punch = self.ctx.punch
        if self._cluster is not None:
            await self._cluster.start(identity, sessions, nodes, self.ctx.limiter)
        api_host, api_port = split_listen(s.listen)
        sock = _bind(api_host, api_port)
        bound_api = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.ctx),
            lifespan="off",
            log_config=None,
            access_log=False,
            ssl_certfile=str(s.tls_cert) if s.tls_cert else None,
            ssl_keyfile=str(s.tls_key) if s.tls_key else None,
            timeout_graceful_shutdown=5,
            server_header=False,
        )
        config.load()
        if config.ssl is not None:
            # uvicorn builds its own context from the files: the same TLS 1.2 floor as the relay.
            harden(config.ssl)
        self._uvicorn = server = _EmbeddedUvicorn(config)
        serve = asyncio.create_task(server.serve(sockets=[sock]), name="api")
        self._tasks.append(serve)
        while not server.started:
            if serve.done():
                serve.result()
                raise HiggsError("the API server stopped during start-up")
            await asyncio.sleep(0.01)
        self.api_url = s.public_url or (
            f"{'https' if tls else 'http'}://{_url_host(api_host)}:{bound_api}"
        )
        self._tasks.append(
            asyncio.create_task(self._maintain(db, nodes, registry, sessions), name="sweep")
        )
        self._tasks.append(asyncio.create_task(self._sample_traffic(self.ctx), name="traffic"))
        self._tasks.append(
            asyncio.create_task(
                self._relay_failover(RelayFailover(sessions)), name="relay-failover"
            )
        )
        if self.ctx.punch is not None:
            self._tasks.append(asyncio.create_task(self._steer(self.ctx.punch), name="steer"))
        if s.udp_relay_address is not None:  # without a UDP relay there is nothing to roam to
            roaming = DeviceRoaming(db, sessions, s)
            self._tasks.append(asyncio.create_task(self._roam(roaming), name="device-roaming"))
        log.info(
            "bosonserver ready",
            extra={"api": self.api_url, "relay": self.relay_base, "database": db.describe()},
        )

    async def _cluster_hub(self, db: Database, events: ServerEvents) -> ServedHub:
        """The local hub wrapped for scale-out, its events claiming presence."""
        from higgs.server.cluster.nats_bus import NatsBus  # only a scale-out needs nats-py

        s = self.settings
        assert s.bus is not None
        instance_id = s.instance_id or default_instance_id()
        bus = await NatsBus.connect(s.bus, f"bosonserver {instance_id}")
        holder: list[Cluster] = []

        async def claim(node_id: str) -> None:
            await holder[0].claim(node_id)

        async def release(node_id: str) -> None:
            await holder[0].release(node_id)

        cluster_events = ClusterEvents(events, claim, release)
        local = self._hub_factory(cluster_events, self.metrics.registry)
        hub = ClusterHub(cast(LocalHub, local), bus, instance_id)
        cluster_events.hub = hub
        self._cluster = Cluster(s, db, bus, hub)
        holder.append(self._cluster)
        return hub

    async def _maintain(
        self, db: Database, nodes: NodeView, registry: RegistryService, sessions: SessionService
    ) -> None:
        """Offline detection and session expiry every ``sweep_interval_s``; the routing view's
        safety-net reload every ``VIEW_RELOAD_S``."""
        view_loaded = time.monotonic()

        async def sweep() -> None:
            nonlocal view_loaded
            await registry.mark_stale_offline()
            await sessions.expire_due()
            if time.monotonic() - view_loaded >= VIEW_RELOAD_S:
                await refresh_view(nodes, db)
                view_loaded = time.monotonic()

        await every(self.settings.sweep_interval_s, sweep, "maintenance sweep", log)

    async def _relay_failover(self, failover: RelayFailover) -> None:
        """Sessions of a relay host that stopped heartbeating move to another (issue 14)."""
        await every(
            self.settings.relay_failover_check_s, failover.run_once, "relay failover round", log
        )

    async def _roam(self, roaming: DeviceRoaming) -> None:
        """Direct devices whose node lost its direct endpoint move onto a relay lease."""
        await every(self.settings.sweep_interval_s, roaming.run_once, "device roaming round", log)

    def _punch_service(self, db: Database, hub: RelayHub, nodes: NodeView) -> PunchService | None:
        """Hole punching needs the UDP relay: its bound legs are the observed addresses."""
        s = self.settings
        if not s.punch_enabled or s.udp_relay_address is None:
            return None
        timers = PunchTimers(
            lead_s=s.punch_lead_s,
            window_s=s.punch_window_s,
            retry_s=s.punch_retry_s,
            steer_after_s=s.punch_steer_after_s,
            steer_window_s=s.punch_steer_window_s,
        )
        return PunchService(db, hub, nodes, timers)

    async def _steer(self, punch: PunchService) -> None:
        """Official apps ask for no punch: the node steers them (services/punch.py)."""
        await every(STEER_EVERY_S, punch.steer_due, "steering round", log)

    async def _sample_traffic(self, ctx: ApiContext) -> None:
        """The dashboard's own time series (services/traffic.py), every TRAFFIC_SAMPLE_S."""
        assert ctx.traffic is not None
        assert ctx.usage is not None
        while True:
            view = list(ctx.sessions.nodes)
            ctx.traffic.sample(
                time.time(),
                ctx.usage.total_rx,
                ctx.usage.total_tx,
                open_sessions=sum(f.open_sessions for f in view),
                nodes_online=sum(1 for f in view if f.state == "online"),
            )
            await asyncio.sleep(TRAFFIC_SAMPLE_S)

    async def stop(self) -> None:
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        for task in reversed(self._tasks):
            if task.get_name() != "api":
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._uvicorn = None
        if self._cluster is not None:
            await self._cluster.stop()
            self._cluster = None
        if self._hub is not None:
            try:
                await self._hub.stop()
            except Exception:
                log.exception("relay hub did not stop cleanly")
            self._hub = None
        if self._db is not None:
            await self._db.dispose()
            self._db = None


@contextlib.asynccontextmanager
async def running_server(
    settings: ServerSettings, hub_factory: HubFactory | None = None
) -> AsyncIterator[BosonServer]:
    """Starts a server for the duration of the block (tests: listen on 127.0.0.1:0)."""
    server = BosonServer(settings, hub_factory)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
