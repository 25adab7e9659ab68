"""The background process: connects, then holds the tunnel until told to stop.

Started by ``higgsvpn connect`` (see :mod:`higgs.client.process`). It

- connects (inside a journal transaction: a failure rolls back everything) and answers the
  waiting ``connect`` with one JSON line;
- renews the session every TTL/3; keeps the relay link up (the link itself reconnects with
  backoff to the same session);
- takes a new route when the server says the session is gone (server restarted without it,
  session expired) or the node is gone (relay says node_offline, or no handshake for
  :data:`STALE_HANDSHAKE_S`): the kill switch stays in place meanwhile, so nothing leaks;
- writes ``status.json`` every few seconds for ``higgsvpn status``;
- on SIGTERM/SIGINT closes the session and undoes every host change (the journal).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from higgs.client.connect import ConnectError, Connector, Tunnel
from higgs.client.host import LinuxTunnelHost
from higgs.client.latency import icmp_rtt_ms
from higgs.client.punch import PUNCH_KEEPALIVE_S, PathWatch, punch
from higgs.client.relay_path import BridgedRelayPath
from higgs.client.reroute import STALE_HANDSHAKE_S, reroute_reason, session_gone
from higgs.client.server_api import ApiError, ServerApi
from higgs.client.settings import ClientSettings
from higgs.client.status import StatusReport, write_status
from higgs.client.timings import PhaseTimer
from higgs.common import eventloop
from higgs.common.backoff import Backoff
from higgs.common.errors import HiggsError
from higgs.common.keys import load_or_create_private_key
from higgs.daemon.pidfile import AlreadyRunning, PidFile
from higgs.daemon.stopsignals import StopSignals
from higgs.osnet.journal import Journal
from higgs.protocol.api import RouteResponse

__all__ = ["STALE_HANDSHAKE_S", "run_daemon"]

log = logging.getLogger(__name__)

STATUS_EVERY_S = 2.0
PING_EVERY_S = 10.0
PUNCHES_KEPT = 10  # hole-punch attempts shown by `status --json`
# How often the server is asked whether our node is still online: a node that crashed (no
# graceful goodbye) is marked offline by the server after its missed heartbeats; this notices
# that long before WireGuard's own handshake goes stale.
NODE_CHECK_EVERY_S = 15.0
# The first packet through a new tunnel: an echo to the node's resolver address. The
# handshake already proved the path, so a lost echo must not hold the connect for long.
FIRST_PACKET_WAIT_S = 1.0
# A tunnel on which nothing arrived this long although something we sent (our traffic, the
# provoking ping) went unanswered gets a new handshake initiation, then one every
# REHANDSHAKE_EVERY_S while still unanswered (backing off after a few seconds,
# higgs.client.punch.PathWatch): a node restarted after a crash lost the session's keys and
# answers only a new handshake, which WireGuard itself starts 15 s after the last answer; the
# restarted node answers as soon as it has our peer back. A merely idle tunnel gets none.
REHANDSHAKE_AFTER_S = 2.5
REHANDSHAKE_EVERY_S = 1.0


@dataclass
class _Health:
    state: str = "connected"
    reroutes: int = 0
    renew_failures: int = 0
    tunnel_rtt_ms: float | None = None
    last_error: str | None = None
    public_endpoint: str | None = None
    path_changes: int = 0
    # The latest hole-punch attempts: (unix time it ended, "punched" | "failed").
    punches: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=PUNCHES_KEPT))


class Daemon:
    def __init__(
        self, settings: ClientSettings, journal: Journal, timer: PhaseTimer | None = None
    ) -> None:
        self.settings = settings
        self.timer = timer or PhaseTimer()
        self.journal = journal
        self.host = LinuxTunnelHost(settings, journal)
        self.api = ServerApi(
            settings.server_url,
            settings.token,
            ca_file=settings.ca_file,
            timeout=settings.http_timeout_s,
        )
        self.key = load_or_create_private_key(settings.key_file)
        self.connector = Connector(
            settings, self.api, self.key, self.host, self._relay_path, self._first_echo
        )
        self.tunnel: Tunnel | None = None
        self.health = _Health()
        self.stop = asyncio.Event()
        self.reroute_needed = asyncio.Event()
        self.reroute_why = ""

    def _relay_path(self, route: RouteResponse) -> BridgedRelayPath:
        return BridgedRelayPath(
            route, self.settings, wg_port=self.host.listen_port(), fwmark=self.host.fwmark
        )

    async def _first_echo(self, target: str) -> float | None:
        return await icmp_rtt_ms(target, wait_s=FIRST_PACKET_WAIT_S, device=self.settings.interface)

    # --- phases ------------------------------------------------------------------------------

    async def connect(self) -> Tunnel:
        async with self.journal.atransaction("connect"):
            self.tunnel = await self.connector.connect(self.timer)
        return self.tunnel

    async def hold(self) -> None:
        """Runs the loops until told to stop; a loop that dies of a bug is logged and started
        again, so the tunnel is never left without its renewal or its watchdog."""
        loops = {
            "renew": self._renew_loop,
            "watch": self._watch_loop,
            "ping": self._ping_loop,
            "node": self._node_loop,
            "kill-switch": self._kill_switch_loop,
            "punch": self._punch_loop,
            "path": self._path_loop,
            "relay": self._relay_loop,
        }
        tasks: dict[asyncio.Future[Any], str] = {
            asyncio.create_task(fn(), name=name): name for name, fn in loops.items()
        }
        stop: asyncio.Future[Any] = asyncio.create_task(self.stop.wait())
        try:
            while not self.stop.is_set():
                done, _ = await asyncio.wait({stop, *tasks}, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {stop}:
                    name = tasks.pop(task)
                    log.error("the %s loop stopped; restarting it", name, exc_info=task.exception())
                    await asyncio.sleep(1.0)
                    tasks[asyncio.create_task(loops[name](), name=name)] = name
        finally:
            stop.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(stop, *tasks, return_exceptions=True)

    async def teardown(self) -> list[str]:
        problems: list[str] = []
        tunnel = self.tunnel
        if tunnel is not None and tunnel.relay is not None:
            await tunnel.relay.close()
        if tunnel is not None:
            try:
                await asyncio.wait_for(self.api.close(tunnel.route.session_id), 5)
            except (ApiError, TimeoutError) as exc:
                # The server closes it anyway when its TTL runs out.
                log.warning("could not close session %s: %s", tunnel.route.session_id, exc)
        await self.api.aclose()
        try:
            await asyncio.to_thread(self.journal.undo_all)
        except HiggsError as exc:
            problems.append(str(exc))
        self.settings.status_file.unlink(missing_ok=True)
        return problems

    # --- loops -------------------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        backoff = Backoff(initial=1.0, maximum=30.0)
        while True:
            tunnel = self.tunnel
            assert tunnel is not None
            delay = max(5.0, tunnel.route.ttl_s / 3)
            if self.health.renew_failures:
                delay = min(delay, backoff.next_delay() + 1)
            await asyncio.sleep(delay)
            if self.reroute_needed.is_set():
                continue
            # The watch loop may have taken a new route while we slept: renewing the old,
            # replaced session would get 409 and send it after yet another new route.
            tunnel = self.tunnel
            assert tunnel is not None
            try:
                await self.api.renew(tunnel.route.session_id)
            except ApiError as exc:
                if self.tunnel is not tunnel:
                    continue  # replaced while the renewal was in flight
                self.health.renew_failures += 1
                self.health.last_error = str(exc)
                if session_gone(exc.status):
                    log.warning("the server no longer has our session: %s", exc)
                    self.reroute_why = "the server no longer has our session"
                    self.reroute_needed.set()
                else:
                    log.warning("renew failed (will retry): %s", exc)
                continue
            self.health.renew_failures = 0
            backoff.reset()

    async def _watch_loop(self) -> None:
        backoff = Backoff(initial=1.0, maximum=20.0)
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            tunnel = self.tunnel
            assert tunnel is not None
            stats = await asyncio.to_thread(self.host.peer_stats)
            reason = reroute_reason(tunnel, stats)
            if reason or self.reroute_needed.is_set():
                reason = reason or self.reroute_why or "the session is gone"
                self.health.state = "reconnecting"
                self.health.last_error = reason
                await self._write_status()
                log.warning("taking a new route: %s", reason)
                try:
                    self.tunnel = await self.connector.switch_route(tunnel)
                except (HiggsError, OSError) as exc:
                    self.health.last_error = f"{reason}; new route failed: {exc}"
                    log.warning("new route failed (will retry): %s", exc)
                    await asyncio.sleep(backoff.next_delay())
                    continue
                backoff.reset()
                self.reroute_needed.clear()
                self.health.reroutes += 1
                self.health.state = "connected"
                self.health.renew_failures = 0
                self._close_old_session(tunnel)
            await self._write_status()

    def _close_old_session(self, old: Tunnel) -> None:
        async def close() -> None:
            with contextlib.suppress(ApiError, TimeoutError):
                await asyncio.wait_for(self.api.close(old.route.session_id), 5)

        asyncio.get_running_loop().create_task(close())

    async def _kill_switch_loop(self) -> None:
        """Puts the kill switch back when another program removes it (osnet's RuleWatch;
        cancelled before teardown removes it on purpose)."""
        watch = self.host.kill_switch_watch()
        if watch is None:
            await self.stop.wait()  # no kill switch: nothing to watch
            return
        await watch.run()

    async def _node_loop(self) -> None:
        while True:
            await asyncio.sleep(NODE_CHECK_EVERY_S)
            tunnel = self.tunnel
            if tunnel is None or self.reroute_needed.is_set():
                continue
            try:
                listing = await self.api.nodes()
            except ApiError as exc:
                log.debug("node check failed: %s", exc)  # server away: the relay tells more
                continue
            node_id = tunnel.route.node.node_id
            state = next((n.state for n in listing.nodes if n.node_id == node_id), None)
            if state != "online" and self.tunnel is tunnel:
                log.warning("node %s is %s", node_id, state or "gone from the server's list")
                self.reroute_why = f"node {node_id} is {state or 'gone'}"
                self.reroute_needed.set()

    # --- issue 12: hole punching and leaving dead direct paths ------------------------------

    async def _punch_loop(self) -> None:
        """On the UDP relay, asks for hole-punch offers and tries each one once; the server
        paces retries, so a failed attempt (a symmetric NAT) is tried again later."""
        tried: str | None = None
        seen: tuple[int, float] | None = None
        while True:
            tunnel = self.tunnel
            # A path that just came up is asked about at once: the first ask, not the poll,
            # sets how soon a new session leaves the relay (docs/client.md).
            if tunnel is None or (id(tunnel), tunnel.path_since) == seen:
                await asyncio.sleep(self.settings.punch_poll_s)
                tunnel = self.tunnel
            if tunnel is not None:
                seen = (id(tunnel), tunnel.path_since)
            if (
                not self.settings.punch
                or tunnel is None
                or tunnel.mode != "udp_relay"
                or self.reroute_needed.is_set()
            ):
                continue
            try:
                answer = await self.api.punch(tunnel.route.session_id)
            except ApiError as exc:
                log.debug("no punch answer: %s", exc)
                continue
            self.health.public_endpoint = answer.client_public
            offer = answer.offer
            if offer is None or offer.nonce == tried:
                continue
            tried = offer.nonce
            port = await asyncio.to_thread(self.host.listen_port)
            opened = await punch(offer, port=port, fwmark=self.host.fwmark)
            if self.tunnel is not tunnel or tunnel.mode != "udp_relay":
                continue
            self.health.punches.append((time.time(), "punched" if opened else "failed"))
            if not opened:
                tunnel.why = (
                    f"hole punching to {offer.peer_endpoint} failed: no probe from the node in "
                    f"{offer.window_s:g}s (a symmetric NAT on either side?); on the UDP relay"
                )
                log.info("%s", tunnel.why)
                await self._write_status()
                continue
            await asyncio.to_thread(self.host.move_peer, offer.peer_endpoint, PUNCH_KEEPALIVE_S)
            tunnel.change_path(
                "punched", f"hole punched to the node's public address {offer.peer_endpoint}"
            )
            self.health.path_changes += 1
            log.info("path: punched (%s)", offer.peer_endpoint)
            await self._write_status()

    async def _relay_loop(self) -> None:
        """Follows the session's UDP relay endpoint (and its relay host's WebSocket hub): when
        its relay host dies the server moves the session to another host, and the peer moves
        with it (no new session)."""
        while True:
            await asyncio.sleep(self.settings.relay_check_s)
            tunnel = self.tunnel
            if tunnel is None or tunnel.route.udp_relay is None or self.reroute_needed.is_set():
                continue
            try:
                info = await self.api.session(tunnel.route.session_id)
            except ApiError as exc:
                log.debug("relay check failed: %s", exc)
                continue
            if self.tunnel is not tunnel or info.udp_relay is None:
                continue
            endpoint = info.udp_relay.endpoint
            if tunnel.route.udp_relay is not None and endpoint != tunnel.route.udp_relay.endpoint:
                log.warning("relay host moved: %s -> %s", tunnel.route.udp_relay.endpoint, endpoint)
                await self.connector.move_relay(tunnel, endpoint)
                self.health.path_changes += 1
                await self._write_status()
            relay = tunnel.route.relay
            if info.relay_url and relay is not None and info.relay_url != relay.url:
                log.warning("relay hub moved: %s -> %s", relay.url, info.relay_url)
                await self.connector.move_ws_relay(tunnel, info.relay_url)
                self.health.path_changes += 1
                await self._write_status()

    async def _path_loop(self) -> None:
        """Watches the path's rx and tx counters (while pinging): on any path, a tunnel quiet
        for :data:`REHANDSHAKE_AFTER_S` with something sent unanswered gets new handshake
        initiations, every :data:`REHANDSHAKE_EVERY_S` at first (a node restarted after a
        crash has lost the session's keys); a direct or punched path on which nothing arrives
        for ``path_dead_s`` is left."""
        watch = PathWatch(
            dead_s=self.settings.path_dead_s,
            rehandshake_after_s=REHANDSHAKE_AFTER_S,
            rehandshake_every_s=REHANDSHAKE_EVERY_S,
        )
        watched: tuple[int, str] | None = None
        while True:
            await asyncio.sleep(1.0)
            tunnel = self.tunnel
            if tunnel is None or self.reroute_needed.is_set():
                watched = None
                continue
            stats = await asyncio.to_thread(self.host.peer_stats)
            if stats is None:
                continue
            relay = tunnel.route.udp_relay
            if tunnel.mode == "punched" and relay is not None and stats.endpoint == relay.endpoint:
                # The node left the dead path first: its fresh handshake came through the relay
                # and WireGuard roamed there, so the session is on the relay already.
                await self._roamed_to_relay(tunnel, relay.endpoint)
                watched = None
                continue
            now = time.monotonic()
            key = (id(tunnel), tunnel.mode)
            if watched != key:
                watched = key
                watch.reset(stats.rx_bytes, now, stats.tx_bytes)
                continue
            # The relay paths are not left here: they have their own watchdogs (the relay
            # link, the stale handshake, the node check).
            leaves = watch.leaves = tunnel.mode in ("punched", "direct")
            verdict = watch.observe(stats.rx_bytes, now, stats.tx_bytes)
            if verdict == "provoke" and tunnel.route.wireguard.dns:
                # Anything the node answers will do: its resolver's address answers a ping.
                target = tunnel.route.wireguard.dns[0]
                asyncio.get_running_loop().create_task(
                    icmp_rtt_ms(target, wait_s=1.0, device=self.settings.interface)
                )
                watch.sent(now)
            elif verdict == "rehandshake":
                log.info("nothing from the node for a while: a new handshake initiation")
                await self._rehandshake(tunnel)
            elif verdict == "dead" and leaves:
                await self._leave_path(tunnel)
                watched = None

    async def _roamed_to_relay(self, tunnel: Tunnel, endpoint: str) -> None:
        # Its keys stay (no new handshake); the relay's keepalive instead of the punched one.
        keepalive = tunnel.route.wireguard.persistent_keepalive
        await asyncio.to_thread(self.host.move_peer, endpoint, keepalive)
        tunnel.change_path(
            "udp_relay", "left the punched path (the node came back through the UDP relay)"
        )
        self.health.path_changes += 1
        log.warning("%s", tunnel.why)
        await self._write_status()

    async def _rehandshake(self, tunnel: Tunnel) -> None:
        """A fresh peer on the same endpoint: WireGuard sends an initiation at once."""
        stats = await asyncio.to_thread(self.host.peer_stats)
        if stats is None or stats.endpoint is None or self.tunnel is not tunnel:
            return
        keepalive = PUNCH_KEEPALIVE_S if tunnel.mode == "punched" else None
        await self.connector._set_peer(tunnel.route, stats.endpoint, keepalive=keepalive)

    async def _leave_path(self, tunnel: Tunnel) -> None:
        reason = (
            f"nothing from the node on the {tunnel.mode} path for {self.settings.path_dead_s:g}s"
        )
        self.health.last_error = reason
        self.health.path_changes += 1
        relay = tunnel.route.udp_relay
        if tunnel.mode == "punched" and relay is not None:
            # Back onto the UDP relay with a fresh peer: its handshake goes out at once, so
            # the relay learns our (maybe new) address without waiting for a rekey.
            await self.connector._set_peer(tunnel.route, relay.endpoint)
            tunnel.change_path(
                "udp_relay", f"left the punched path ({reason}); back on the UDP relay"
            )
            log.warning("%s", tunnel.why)
            await self._write_status()
            return
        log.warning("the %s path is dead (%s): taking a new route", tunnel.mode, reason)
        self.reroute_why = reason
        self.reroute_needed.set()

    async def _ping_loop(self) -> None:
        while True:
            tunnel = self.tunnel
            assert tunnel is not None
            target = tunnel.route.wireguard.dns[0] if tunnel.route.wireguard.dns else None
            if target:
                self.health.tunnel_rtt_ms = await icmp_rtt_ms(
                    target, wait_s=2.0, device=self.settings.interface
                )
            await asyncio.sleep(PING_EVERY_S)

    async def _write_status(self) -> None:
        tunnel = self.tunnel
        if tunnel is None:
            return
        # `wg show` and the file write block: in a thread, never on the event loop.
        stats = await asyncio.to_thread(self.host.peer_stats)
        report = StatusReport(
            pid=os.getpid(),
            state=self.health.state,
            interface=self.settings.interface,
            server_url=self.settings.server_url,
            session_id=tunnel.route.session_id,
            node_id=tunnel.route.node.node_id,
            country=tunnel.route.node.country,
            region=tunnel.route.node.region,
            mode=tunnel.mode,
            path_why=tunnel.why,
            address=tunnel.address,
            dns=list(tunnel.route.wireguard.dns),
            full_tunnel=self.settings.full_tunnel,
            kill_switch=self.settings.kill_switch_enabled,
            connected_at=tunnel.connected_at,
            path_since=tunnel.path_since,
            latest_handshake=stats.latest_handshake if stats else 0.0,
            rx_bytes=stats.rx_bytes if stats else 0,
            tx_bytes=stats.tx_bytes if stats else 0,
            tunnel_rtt_ms=self.health.tunnel_rtt_ms,
            server_rtt_ms=self.api.last_rtt_ms,
            relay_reconnects=tunnel.relay.reconnects if tunnel.relay else 0,
            reroutes=self.health.reroutes,
            last_error=self.health.last_error,
            updated_at=time.time(),
            public_endpoint=self.health.public_endpoint,
            path_changes=self.health.path_changes,
            punches=[p for p in self.health.punches if p[0] >= tunnel.connected_at],
        )
        await asyncio.to_thread(write_status, self.settings.status_file, report)


def _answer(payload: dict[str, Any]) -> None:
    """The one line ``connect`` waits for; then stdout goes to /dev/null for good."""
    with contextlib.suppress(OSError):
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


async def _main(settings: ClientSettings) -> int:
    timer = PhaseTimer()
    # Before the journal replay: a SIGTERM during it lets it finish (higgs.daemon.stopsignals).
    signals = StopSignals.install()
    try:
        with PidFile(settings.pid_file):
            return await _journaled(settings, signals, timer)
    except AlreadyRunning as exc:
        _answer({"ok": False, "error": f"already connected (process {exc.pid})"})
        return 1
    finally:
        signals.remove()


async def _journaled(settings: ClientSettings, signals: StopSignals, timer: PhaseTimer) -> int:
    try:
        with timer.phase("journal_open"):
            journal = Journal(settings.journal_file)
    except HiggsError as exc:
        _answer({"ok": False, "error": str(exc)})
        return 1
    with journal:
        if len(journal):
            log.warning("undoing %d change(s) a previous run left behind", len(journal))
            try:
                with timer.phase("journal_replay"):
                    await asyncio.to_thread(journal.replay)
            except HiggsError as exc:
                _answer({"ok": False, "error": f"cannot undo a previous run: {exc}"})
                return 1
        if signals.requested:
            _answer({"ok": False, "error": "interrupted before the tunnel was up; nothing changed"})
            return 1
        return await _run(settings, journal, signals, timer)


async def _run(
    settings: ClientSettings, journal: Journal, signals: StopSignals, timer: PhaseTimer
) -> int:
    try:
        with timer.phase("daemon_init"):
            daemon = Daemon(settings, journal, timer)
    except HiggsError as exc:
        _answer({"ok": False, "error": str(exc)})
        return 1
    signals.hand_over(lambda _name: daemon.stop.set())
    connect_task = asyncio.create_task(daemon.connect())
    stop_task = asyncio.create_task(daemon.stop.wait())
    await asyncio.wait({connect_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    if not connect_task.done():
        connect_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, HiggsError):
            await connect_task
        await daemon.api.aclose()
        _answer({"ok": False, "error": "interrupted before the tunnel was up; nothing changed"})
        return 1
    stop_task.cancel()
    try:
        tunnel = connect_task.result()
    except (HiggsError, OSError) as exc:
        log.error("connect failed: %s", exc)
        await daemon.api.aclose()
        message = str(exc)
        if not isinstance(exc, ConnectError | ApiError):
            message = f"{message} (every change was rolled back)"
        _answer({"ok": False, "error": message})
        return 1
    with timer.phase("status_write"):
        await daemon._write_status()
    _answer(
        {
            "ok": True,
            "pid": os.getpid(),
            "node_id": tunnel.route.node.node_id,
            "country": tunnel.route.node.country,
            "region": tunnel.route.node.region,
            "mode": tunnel.mode,
            "address": tunnel.address,
            "session_id": tunnel.route.session_id,
            "interface": settings.interface,
            "timings": timer.as_dict(),
        }
    )
    log.info(
        "connected: node %s via %s, %s", tunnel.route.node.node_id, tunnel.mode, tunnel.address
    )
    await daemon.hold()
    log.info("disconnecting")
    problems = await daemon.teardown()
    for problem in problems:
        log.error("%s", problem)
    return 1 if problems else 0


def run_daemon(settings: ClientSettings) -> int:
    """The daemon's body: in the process ``connect`` forked (higgs.client.process), or in
    ``higgsvpn _daemon`` (settings read from stdin)."""
    return eventloop.run(_main(settings))
