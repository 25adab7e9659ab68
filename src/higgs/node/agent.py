"""The node agent's lifecycle: set the host up, serve, and always put the host back.

Start, in order (each host change journaled with its undo before it is made):

1. preflight — settings complete, root or CAP_NET_ADMIN, an uplink (default route) exists;
   nothing on the host has been touched if any of these fails;
2. recovery — undo what a crashed earlier run left in the journal, then sweep our names
   (the stop signals are caught before it: one arriving now lets the recovery finish, then
   the node stops, exit status 0, without serving — higgs.daemon.stopsignals);
3. identity — the WireGuard keypair in the state dir (created on first start, 0600);
4. WireGuard interface with the node's tunnel address (.1 of the subnet), listen port and
   tunnel MTU (configured, or computed from the uplink and an optional path-MTU probe);
5. IPv4 forwarding on (the previous value is journaled and restored), and IPv6 forwarding
   when the uplink has internet IPv6 (the interface then also gets the ULA ``::1``);
6. firewall: NAT on the uplink (NAT66 too, or IPv6 rejected), owner protection, DNS
   interception to the forwarder;
7. DNS forwarder on the tunnel address (and on the IPv6 one);
8. server API (register, heartbeat) and control link (peers, relayed sessions); a restart
   (an identity from an earlier registration) registers during steps 4-7 instead of before
   them, and initiates to the crashed run's clients as soon as the server's sync gives them
   back (higgs.node.peers, endpoints read in step 2);
   port mapping on the home router (higgs.node.portmap: journaled, renewed, reported, and
   verified by the server's probe, higgs.node.reachability);
9. watch the uplink: when the default route moves, NAT moves with it; when its MTU changes,
   the tunnel MTU follows (interface, registration, heartbeats, so new clients get it);
   watch the firewall: rules another program removed are put back (higgs.node.rulewatch).

Stop (SIGTERM, SIGINT, ``higgsnode stop``, an unhandled error): deregister, stop the links and
the forwarder, then undo every host change newest first — every undo runs even when one
fails, and all failures are reported together.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from higgs import __version__
from higgs.common import eventloop
from higgs.common.errors import HiggsError
from higgs.common.keys import PrivateKey, load_or_create_private_key
from higgs.daemon.stopsignals import StopSignals
from higgs.node.control_link import ControlLink
from higgs.node.dns_forwarder import DnsForwarder
from higgs.node.host import NodeHost, Uplink, WgPeerTable
from higgs.node.hostops import Shaper, Tunnel
from higgs.node.metrics import Budget, collect, heartbeat_body
from higgs.node.mtu import decide_mtu, fits_uplink, probe
from higgs.node.ownerstate import is_paused, set_paused
from higgs.node.peers import PeerManager, PeerRow
from higgs.node.portmap import PortMapper
from higgs.node.punch import Puncher
from higgs.node.reachability import ProbeListener
from higgs.node.rulewatch import node_rule_watch
from higgs.node.runstate import PidFile, write_status
from higgs.node.server_api import Identity, ServerApi
from higgs.node.settings import NodeSettings
from higgs.osnet.firewall.watch import RuleWatch
from higgs.osnet.mtu import MtuDecision
from higgs.osnet.portmap import PortMapping
from higgs.protocol.api import NodeRegisterRequest

__all__ = ["Agent", "check_privileges", "run_agent"]

log = logging.getLogger(__name__)

KEY_FILE = "private.key"
BUDGET_FILE = "budget.json"
UPLINK_POLL_S = 2.0
IPV6_POLL_S = 5.0
STATUS_EVERY_S = 2.0
CAP_NET_ADMIN = 12
# The owner's dashboard starts DASHBOARD_SETTLE_S after the server's peers are back on the
# interface, or DASHBOARD_AFTER_S after the set-up without them (server unreachable):
# importing it (FastAPI, uvicorn: 0.3 s of CPU on an idle machine, seconds on a loaded one)
# would otherwise hold the event loop, and with it the control link's connect and sync, while
# a restarted node's clients wait to be served; imported in a thread right after the sync it
# still slowed the relayed sessions' first datagrams (a 0.6 s gap at load 5-7), so the
# clients' handshakes go first.
DASHBOARD_AFTER_S = 5.0
DASHBOARD_SETTLE_S = 3.0


class AgentError(HiggsError):
    pass


def check_privileges() -> None:
    """Root, or CAP_NET_ADMIN in the effective set (systemd AmbientCapabilities=)."""
    if os.geteuid() == 0:
        return
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:") and int(line.split()[1], 16) >> CAP_NET_ADMIN & 1:
                return
    except (OSError, ValueError):
        pass
    raise AgentError(
        "higgsnode changes the network configuration: run it as root or with CAP_NET_ADMIN "
        "(e.g. `sudo higgsnode start …`, or the shipped systemd unit)"
    )


def check_settings(settings: NodeSettings) -> None:
    if not settings.server:
        raise AgentError("no server given: set --server URL (or `server` in the config file)")


def registration_request(
    settings: NodeSettings,
    public_key: str,
    mtu: int,
    tunnel_v6: ipaddress.IPv6Interface | None = None,
) -> NodeRegisterRequest:
    """What the node announces; validated here so a value the server would refuse stops the
    node before it touches the host. ``tunnel_v6`` (the node forwards IPv6) announces the
    clients' IPv6 prefix."""
    s = settings
    try:
        return NodeRegisterRequest(
            public_key=public_key,
            listen_port=s.listen_port,
            endpoint=s.endpoint,
            tunnel_subnet=str(s.tunnel_subnet),
            tunnel_subnet_v6=str(tunnel_v6.network) if tunnel_v6 is not None else None,
            tunnel_mtu=mtu,
            max_clients=s.max_clients,
            bandwidth_mbps=s.bandwidth_mbps,
            country=s.country,
            region=s.region,
            version=__version__,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise AgentError(f"invalid settings: field '{field}': {first['msg']}") from None


class Agent:
    def __init__(
        self,
        settings: NodeSettings,
        host: NodeHost,
        key: PrivateKey,
        signals: StopSignals | None = None,
        *,
        server_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._signals = signals
        self.host = host
        self.key = key
        # The server API's HTTP transport (None: the network); the unit tests' seam.
        self.server_transport = server_transport
        self.started_at = time.time()
        self.uplink: Uplink | None = None
        self.mtu: MtuDecision | None = None
        self.dns: DnsForwarder | None = None
        self.dns6: DnsForwarder | None = None
        self.server: ServerApi | None = None
        self.control: ControlLink | None = None
        self.peers: PeerManager | None = None
        self.portmap: PortMapper | None = None
        self._mapped_host: str | None = None  # the mapping's external address, last seen
        self.probes: ProbeListener | None = None
        self.rules: RuleWatch | None = None
        self.puncher: Puncher | None = None  # issue 12: hole punching and steering
        self.budget = Budget.load(settings.state_dir / BUDGET_FILE, settings.shaping.monthly_cap_gb)
        self._stop = asyncio.Event()
        self._peers_back = asyncio.Event()  # the control link applied a sync
        self._stop_reason = ""
        self._error: BaseException | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    # ---- helpers -----------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            log.info("stopping", extra={"reason": reason})
            self._stop_reason = reason
            self._stop.set()

    def _peer_rows(self) -> Sequence[PeerRow]:
        return self.host.wg.peers() if self.host.wg is not None else ()

    def _reported_rows(self) -> Sequence[PeerRow]:
        rows = self._peer_rows()
        return self.puncher.reported(rows) if self.puncher is not None else rows

    async def _heartbeat_body(self) -> dict[str, Any]:
        rows = await asyncio.to_thread(self._peer_rows)
        metrics = collect(rows, self.budget)
        body = heartbeat_body(metrics, rows)
        if self.mtu is not None:
            body["tunnel_mtu"] = self.mtu.mtu  # the server updates the clients' configs
        body["ipv6"] = self.host.tunnel_v6 is not None and self.host.ipv6_active
        body["paused"] = is_paused(self.settings.state_dir)  # issue 15: the owner's switch
        if self.portmap is not None and self.portmap.methods:
            body["port_mapping"] = self._port_mapping_report()
        return body

    def set_paused(self, paused: bool) -> None:
        """The owner's switch: a paused node takes no new peers and the server routes it no
        new sessions (told at once, by a heartbeat); open sessions drain."""
        set_paused(self.settings.state_dir, paused)
        if self.server is not None:
            self.server.wake()

    # ---- port mapping (higgs.node.portmap) -----------------------------------------------

    def _port_mapping_report(self) -> dict[str, Any] | None:
        pm = self.portmap
        if pm is None or not pm.methods:
            return None
        m = pm.mapping
        if m is None:
            return {"method": None, "reason": (pm.why_none() or "")[:500]}
        return {
            "method": m.method.value,
            "external_endpoint": m.endpoint,
            "lifetime_s": m.lifetime_s,
        }

    async def _mapping_changed(self, mapping: PortMapping | None) -> None:
        if self.server is not None:
            self.server.set_port_mapping(self._port_mapping_report())
        host = mapping.external_ip if mapping is not None else None
        before, self._mapped_host = self._mapped_host, host or self._mapped_host
        if host and before and host != before and self.puncher is not None:
            # Our public address moved: direct peers (devices) follow by WireGuard roaming.
            await self.puncher.address_changed()
        if self.probes is not None:
            if mapping is None:
                self.probes.stop()
            else:
                self.probes.expect()

    def _uplink6(self) -> Uplink | None:
        """The IPv6 uplink, for the pinhole (blocking netlink read: a few microseconds)."""
        try:
            return self.host.ipv6_uplink()
        except HiggsError:
            return None

    def _start_port_mapping(self) -> None:
        s = self.settings
        # A manual endpoint means the owner forwarded the port by hand: "auto" leaves the
        # router alone then; a method named explicitly is still tried.
        setting = "off" if s.endpoint and s.port_mapping == "auto" else s.port_mapping
        self.portmap = PortMapper(
            setting,
            journal=self.host.open_journal(),
            port=s.listen_port,
            lifetime_s=s.port_mapping_lifetime_s,
            uplink=lambda: self.uplink,
            on_change=self._mapping_changed,
            uplink6=self._uplink6,
        )
        if not self.portmap.methods:
            return
        server = self.server
        assert server is not None

        def verified(ok: bool) -> None:
            if self.portmap is not None:
                self.portmap.verified = ok

        self.probes = ProbeListener(s.listen_port, server.confirm_reachability, verified)
        self._spawn(self.portmap.run(), "port-mapping")

    def registration(self) -> NodeRegisterRequest:
        assert self.mtu is not None
        return registration_request(
            self.settings, self.key.public_b64(), self.mtu.mtu, self.host.tunnel_v6
        )

    def _decide_mtu(self, uplink: Uplink) -> MtuDecision:
        """Blocking (the probe pings): run in a thread."""
        path_mtu = probe(self.settings, self.host.runner, uplink.mtu)
        decision = decide_mtu(self.settings, uplink.mtu, path_mtu)
        log.info("tunnel mtu", extra={"mtu": decision.mtu, "why": decision.reason})
        if self.settings.mtu is not None and not fits_uplink(
            self.settings, decision.mtu, path_mtu or uplink.mtu
        ):
            log.warning(
                "the configured mtu does not fit the uplink: outer packets will be fragmented",
                extra={"mtu": decision.mtu, "why": decision.reason},
            )
        return decision

    async def _follow_mtu(self, uplink: Uplink) -> None:
        """The uplink changed: recompute; a new figure goes on the interface and to the server
        (the next route answers carry it; connected clients keep theirs until they reconnect)."""
        decision = await asyncio.to_thread(self._decide_mtu, uplink)
        old, self.mtu = self.mtu, decision
        if old is not None and old.mtu == decision.mtu:
            return
        log.info("tunnel mtu changed", extra={"old": old.mtu if old else None, "new": decision.mtu})
        await asyncio.to_thread(self.host.set_mtu, decision.mtu)
        if self.server is not None:
            self.server.set_tunnel_mtu(decision.mtu)

    def make_server_api(self) -> ServerApi:
        s = self.settings
        assert s.server is not None
        self.server = ServerApi(
            s.server,
            enroll_key=s.enroll_key.get_secret_value() if s.enroll_key else None,
            registration=self.registration(),
            state_dir=s.state_dir,
            heartbeat_body=self._heartbeat_body,
            on_identity=self._on_identity,
            timeout_s=s.server_timeout_s,
            private_key=self.key,
            transport=self.server_transport,
        )
        return self.server

    async def _on_identity(self, ident: Identity) -> None:
        """A (re-)registration gave a new node token: the control link must use it."""
        if self.control is not None:
            await self.control.stop()
            self.control = None
        if self.peers is None:
            return  # registered before the interface exists: started at the end of setup
        self.control = ControlLink(
            ident.relay_url,
            ident.node_token,
            peers=self.peers,
            peer_rows=self._reported_rows,
            wg_port=self.settings.listen_port,
            stats_interval_s=ident.heartbeat_interval_s,
            on_punch=self.puncher.handle if self.puncher is not None else None,
            on_synced=self._peers_back.set,
        )
        await self.control.start()

    def status(self) -> dict[str, Any]:
        rows: Sequence[PeerRow] = ()
        with contextlib.suppress(Exception):
            rows = self._peer_rows()
        now = time.time()
        return {
            "pid": os.getpid(),
            "version": __version__,
            "started_at": self.started_at,
            "interface": self.settings.interface,
            "listen_port": self.settings.listen_port,
            "tunnel_address": str(self.settings.node_address),
            "tunnel_address_v6": str(self.host.tunnel_v6) if self.host.tunnel_v6 else None,
            "ipv6_active": self.host.tunnel_v6 is not None and self.host.ipv6_active,
            "endpoint": self.settings.endpoint,
            "uplink": self.uplink.name if self.uplink else None,
            "mtu": {"mtu": self.mtu.mtu, "reason": self.mtu.reason} if self.mtu else None,
            "server": self.server.status.as_dict() if self.server else None,
            "control": self.control.status() if self.control else None,
            "punch": self.puncher.status() if self.puncher else None,
            "peers": [
                {
                    "public_key": r.public_key,
                    "allowed_ips": list(r.allowed_ips),
                    "rx_bytes": r.rx_bytes,
                    "tx_bytes": r.tx_bytes,
                    "last_handshake_s": (
                        round(max(0.0, now - r.latest_handshake), 1) if r.latest_handshake else None
                    ),
                }
                for r in rows
            ],
            "sessions": len(self.peers.sessions) if self.peers else 0,
            "dns": self.dns.stats.as_dict() if self.dns else None,
            "port_mapping": self.portmap.status() if self.portmap else None,
            "firewall_watch": self.rules.stats.as_dict() if self.rules else None,
            "budget_left_mb": self.budget.left_mb,
        }

    # ---- background tasks --------------------------------------------------------------

    async def _write_status(self) -> None:
        while True:
            try:
                status = await asyncio.to_thread(self.status)
                await asyncio.to_thread(write_status, self.settings.state_dir, status)
            except OSError as exc:
                log.warning("cannot write the status file", extra={"why": str(exc)})
            await asyncio.sleep(STATUS_EVERY_S)

    async def _uplink_changed(self, old: Uplink | None, new: Uplink | None) -> None:
        if new is None:
            # No default route right now (a link flapping): keep the current NAT.
            log.warning("uplink lost; keeping the NAT rules until it is back")
            return
        if old is None or old.mtu != new.mtu or old.name != new.name:
            await self._follow_mtu(new)
        if old is not None and old.name == new.name and old.addresses == new.addresses:
            return
        log.info(
            "uplink changed; moving NAT",
            extra={"old": self.uplink.name if self.uplink else None, "new": new.name},
        )
        await asyncio.to_thread(self.host.move_uplink, new)
        self.uplink = new

    async def _watch_uplink(self) -> None:
        watcher = self.host.uplink_watcher(self._uplink_changed, UPLINK_POLL_S)
        watcher.current = self.uplink
        await watcher.run()

    async def _watch_ipv6(self) -> None:
        """NAT66 only while the uplink has internet IPv6; otherwise clients' IPv6 is rejected
        (fail fast) and the next heartbeat tells the server to stop offering IPv6."""
        while True:
            await asyncio.sleep(IPV6_POLL_S)
            uplink = self.uplink
            if uplink is None:
                continue
            try:
                available = await asyncio.to_thread(self.host.ipv6_available, uplink)
                if available != self.host.ipv6_active:
                    log.warning(
                        "uplink %s internet IPv6; %s",
                        "regained" if available else "lost",
                        "NAT66 again" if available else "rejecting clients' IPv6",
                        extra={"uplink": uplink.name},
                    )
                    await asyncio.to_thread(self.host.set_ipv6_active, available, uplink)
            except HiggsError as exc:
                log.warning("IPv6 check failed: %s", exc)

    def _watch(self, task: asyncio.Task[Any]) -> None:
        """A background task that ends on its own ends the agent (with its error)."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self.request_stop(f"{task.get_name()} ended")
        elif isinstance(exc, HiggsError):
            self._error = exc
            self.request_stop(str(exc))
        else:
            log.error("unhandled error in %s", task.get_name(), exc_info=exc)
            self._error = exc
            self.request_stop(f"unhandled error in {task.get_name()}")

    async def _reinitiate(self) -> None:
        """New UDP relay peers still without a handshake get a new initiation soon
        (higgs.node.peers.REINITIATE_AFTER_S), not after WireGuard's own 5 s."""
        while True:
            await asyncio.sleep(0.5)
            peers = self.peers
            if peers is None or not peers.initiating:
                continue
            resent = await asyncio.to_thread(peers.reinitiate)
            if resent:
                log.info(
                    "relay peer without a handshake yet: a new initiation",
                    extra={"sessions": resent},
                )

    async def _serve_dashboard(self) -> None:
        """After the peers are back (see :data:`DASHBOARD_AFTER_S`); imported in a thread, so
        the event loop (relayed sessions' datagrams) keeps running meanwhile."""
        try:
            await asyncio.wait_for(self._peers_back.wait(), DASHBOARD_AFTER_S)
            await asyncio.sleep(DASHBOARD_SETTLE_S)
        except TimeoutError:
            pass
        serve = await asyncio.to_thread(_import_dashboard)
        await serve(self)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._watch)
        self._tasks.append(task)

    # ---- the lifecycle -----------------------------------------------------------------

    async def run(self, uplink: Uplink) -> None:
        """Sets up, serves until asked to stop, tears down. Raises what went wrong."""
        self.uplink = uplink
        signals = self._signals or StopSignals.install()
        signals.hand_over(self.request_stop)
        try:
            self.mtu = await asyncio.to_thread(self._decide_mtu, uplink)
            server = self.make_server_api()
            if server.identity is None:
                # A first start: a refused enrollment ends here, before the host is touched;
                # an unreachable server does not stop the node (direct mode works without it).
                await server.try_register()
                host = await self._setup_host(uplink)
            else:
                host = await self._setup_host_registering(uplink, server)
            await self._serve(*host)
            log.info(
                "node up",
                extra={
                    "interface": self.settings.interface,
                    "address": str(self.settings.node_address),
                    "uplink": uplink.name,
                    "port": self.settings.listen_port,
                },
            )
            await self._stop.wait()
        except BaseException as exc:
            self._error = exc
        finally:
            problems = await self._teardown()
            if self._signals is None:
                signals.remove()
        if problems:
            text = "; ".join(problems)
            if self._error is not None:
                raise AgentError(f"{self._error}; and while stopping: {text}") from self._error
            raise AgentError(f"stopped, but some changes could not be undone: {text}")
        if self._error is not None:
            raise self._error

    async def _setup_host_registering(
        self, uplink: Uplink, server: ServerApi
    ) -> tuple[Tunnel, Shaper]:
        """A restart (an identity from an earlier registration): the registration's round
        trips to the server overlap the host's set-up, which waits on commands, not on the
        server. A refusal now (the node was deleted meanwhile) still stops the node; its host
        changes are undone by the teardown, as after any failure. The control link starts
        after both (:meth:`_serve`)."""
        registering = asyncio.create_task(server.try_register(), name="register")
        try:
            host = await self._setup_host(uplink)
        except BaseException:
            registering.cancel()
            with contextlib.suppress(BaseException):
                await registering
            raise
        await registering
        return host

    async def _setup_host(self, uplink: Uplink) -> tuple[Tunnel, Shaper]:
        """The host's changes (journaled): interface, shaping, forwarding, firewall, DNS."""
        s = self.settings
        assert self.mtu is not None
        wg = await asyncio.to_thread(self.host.bring_up_interface, self.key, self.mtu.mtu)
        shaper = await asyncio.to_thread(self.host.setup_shaping)
        previous = await asyncio.to_thread(self.host.enable_forwarding, uplink)
        log.info("ip forwarding on", extra={"was": previous})
        await asyncio.to_thread(self.host.apply_firewall, uplink)
        self.rules = node_rule_watch(self.host)
        if self.rules is not None:
            self._spawn(self.rules.run(), "rule-watch")
        if s.dns.enabled:
            upstreams = s.dns_upstreams()
            if not upstreams:
                raise AgentError("no DNS upstream: /etc/resolv.conf lists none; set dns.upstreams")
            self.dns = DnsForwarder(
                str(s.node_address.ip),
                s.dns.port,
                upstreams,
                timeout_s=s.dns.timeout_s,
                max_inflight=s.dns.max_inflight,
            )
            await self.dns.start()
            if self.host.tunnel_v6 is not None:
                # The same forwarder on the IPv6 tunnel address (IPv6 queries are DNATed here).
                self.dns6 = DnsForwarder(
                    str(self.host.tunnel_v6.ip),
                    s.dns.port,
                    upstreams,
                    timeout_s=s.dns.timeout_s,
                    max_inflight=s.dns.max_inflight,
                )
                await self.dns6.start()
        return wg, shaper

    async def _serve(self, wg: Tunnel, shaper: Shaper) -> None:
        """The peers and the links: server, control link, port mapping, watches."""
        s = self.settings
        table = WgPeerTable(wg)
        self.peers = PeerManager(
            table,
            s.node_address,
            s.max_clients,
            tunnel_v6=self.host.tunnel_v6,
            on_change=shaper.update,
            accepting=lambda: not self.budget.exhausted and not is_paused(s.state_dir),
            on_removing=self.budget.settle,  # a removed peer's last bytes count this month
            endpoint_hints=self.host.previous_endpoints,
        )
        self.puncher = Puncher(s.listen_port, self.peers, table, table.peers)
        server = self.server or self.make_server_api()
        if server.identity is not None and server.status.registrations:
            await self._on_identity(server.identity)
        self._spawn(server.run(), "server-link")
        self._start_port_mapping()
        self._spawn(self._watch_uplink(), "uplink-watch")
        self._spawn(self._reinitiate(), "reinitiate")
        if self.host.tunnel_v6 is not None:
            self._spawn(self._watch_ipv6(), "ipv6-watch")
        self._spawn(self._write_status(), "status")
        if s.dashboard.enabled:  # issue 15: the owner's page and /metrics on loopback
            self._spawn(self._serve_dashboard(), "dashboard")

    async def _teardown(self) -> list[str]:
        problems: list[str] = []
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks = []
        if self.probes is not None:
            self.probes.stop()
        if self.puncher is not None:
            await self.puncher.stop()
        if self.portmap is not None:
            try:
                await self.portmap.stop()  # before the server hears we are gone
            except HiggsError as exc:
                problems.append(f"port mapping: {exc}")
        if self.control is not None:
            try:
                await self.control.stop()
            except Exception as exc:
                problems.append(f"control link: {exc}")
        if self.server is not None:
            await self.server.deregister()
            await self.server.aclose()
        for forwarder in (self.dns, self.dns6):
            if forwarder is None:
                continue
            try:
                await forwarder.stop()
            except Exception as exc:
                problems.append(f"dns forwarder: {exc}")
        try:
            await asyncio.to_thread(self.host.teardown)
        except HiggsError as exc:
            problems.append(str(exc))
        log.info("node stopped", extra={"reason": self._stop_reason or "error"})
        return problems


def _import_dashboard() -> Callable[[Agent], Coroutine[Any, Any, None]]:
    from higgs.node.dashboard.app import serve_dashboard

    return serve_dashboard


async def _main(settings: NodeSettings) -> None:
    check_settings(settings)
    check_privileges()
    # Before anything touches the host: a SIGTERM during the recovery below lets it finish.
    signals = StopSignals.install()
    try:
        await _recover_then_run(settings, signals)
    finally:
        signals.remove()


async def _recover_then_run(settings: NodeSettings, signals: StopSignals) -> None:
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with PidFile(settings.state_dir):
        host = NodeHost(settings)
        try:
            uplink = await asyncio.to_thread(host.uplink)  # no default route: stop here
            log.info("start-up recovery: undoing what an earlier run left, if anything")
            problems = await asyncio.to_thread(host.recover)
            if problems:
                raise AgentError(
                    "the host still holds leftovers of an earlier run that could not be "
                    "removed: " + "; ".join(problems)
                )
            if signals.requested:
                log.info(
                    "node stopped after its start-up recovery", extra={"reason": signals.reason}
                )
                return
            key = load_or_create_private_key(settings.state_dir / KEY_FILE)
            await asyncio.to_thread(host.decide_ipv6, uplink, key.public_b64())
            registration_request(
                settings, key.public_b64(), decide_mtu(settings, uplink.mtu).mtu, host.tunnel_v6
            )
            await Agent(settings, host, key, signals).run(uplink)
        finally:
            host.close()


def run_agent(settings: NodeSettings) -> None:
    """Runs the agent in the foreground until it is stopped (the CLI's ``start``)."""
    eventloop.run(_main(settings))
