"""The relay hub: the WebSocket listener, its in-memory tables and its timers.

The server's services tell the hub (through :class:`~higgs.server.relay.ports.RelayHub`) which
nodes and sessions exist; the hub authenticates each WebSocket upgrade synchronously from those
tables (SHA-256 of the bearer token), forwards frames between the two ends of a session
(:mod:`higgs.server.relay.links`) and reports link events through
:class:`~higgs.server.relay.ports.RelayEvents`. It never touches the database.

picows on uvloop carries the data path: relay-bench.md measured it at 1.6x Node ``ws`` frame by
frame and about 7x with write coalescing, the only Python stack faster than Node at every load.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any

from picows import (
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)
from prometheus_client import CollectorRegistry

from higgs.common.ratelog import RateLimitedLog
from higgs.protocol.control import MAX_CONTROL_MESSAGE_SIZE, ControlMessage, Hello, SessionClosed
from higgs.protocol.relay import PROTOCOL_VERSION, VERSION_HEADER, CloseCode, DropReason
from higgs.server.relay.bridge import Bridges, parse_endpoint
from higgs.server.relay.links import LinkHost, NodeLink, SessionLink, _Link
from higgs.server.relay.metrics import RelayCounters, RelayMetricsCollector
from higgs.server.relay.ports import RelayEvents, RelayHub
from higgs.server.relay.splice import SPLICED_HEADER, SpliceLink
from higgs.server.relay.tables import RelayTables, SessionEntry

__all__ = ["NODE_PATH", "SESSION_PATH", "NoHubEvents", "RelayHubServer"]

log = logging.getLogger(__name__)

NODE_PATH = b"/v1/relay/node"
SESSION_PATH = b"/v1/relay/session"
_VERSION = str(PROTOCOL_VERSION)


def _wire(message: ControlMessage) -> dict[str, Any]:
    """A message the hub itself sends, as the JSON object on the wire (unset fields left out)."""
    return message.model_dump(mode="json", exclude_none=True)


def _bearer(request: WSUpgradeRequest) -> str | None:
    value = request.headers.get("Authorization")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _bearer_hash(request: WSUpgradeRequest) -> str | None:
    token = _bearer(request)
    return None if token is None else hashlib.sha256(token.encode()).hexdigest()


def _json_error(status: int, code: str, message: str) -> WSUpgradeResponseWithListener:
    body = json.dumps({"error": code, "message": message}).encode()
    response = WSUpgradeResponse.create_error_response(
        status, body, {"Content-Type": "application/json"}
    )
    return WSUpgradeResponseWithListener(response, None)


class NoHubEvents:
    """Events for a hub that reports to nobody (a relay host's hub: presence, sync and control
    stay with the API instances; the relay benchmark's hub)."""

    async def node_link_up(self, node_id: str) -> None:
        return None

    async def node_link_down(self, node_id: str) -> None:
        return None

    async def node_message(self, node_id: str, message: dict[str, Any]) -> None:
        return None

    def session_activity(self, session_id: str) -> None:
        return None


class RelayHubServer:
    """Implements :class:`~higgs.server.relay.ports.RelayHub` on picows.

    ``ping_interval_s`` / ``dead_after_s``: every link is pinged each interval and closed with
    4008 after that long without receiving anything (tests pass short values).
    ``queue_limit_bytes``: per destination, frames waiting while its socket is full; beyond it
    the oldest is dropped (``queue_full``). ``write_high``/``write_low``: the transport's write
    buffer limits that decide when a destination counts as full.
    """

    def __init__(
        self,
        events: RelayEvents,
        registry: CollectorRegistry,
        *,
        ping_interval_s: float = 15.0,
        dead_after_s: float = 45.0,
        heartbeat_interval_s: float = 15.0,
        activity_interval_s: float = 1.0,
        queue_limit_bytes: int = 256 * 1024,
        write_high: int = 256 * 1024,
        write_low: int = 64 * 1024,
        read_buffer_init_size: int = 2048,
    ) -> None:
        self.events = events
        self.counters = RelayCounters()
        self._quiet = RateLimitedLog(log)
        self.tables = RelayTables()
        registry.register(RelayMetricsCollector(self.counters, self.tables.totals))
        self.bridges = Bridges(self.flush)
        registry.register(self.bridges)
        self.ping_interval_s = ping_interval_s
        self.dead_after_s = dead_after_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.activity_interval_s = activity_interval_s
        self.queue_limit = queue_limit_bytes
        self.write_high = write_high
        self.write_low = write_low
        self.read_buffer_init_size = read_buffer_init_size
        self.dirty: list[_Link] = []
        self._net_armed = False
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Scale-out: the relay base of the other instance's hub holding a node's link (None:
        # not known elsewhere). A session link for such a node is spliced there (splice.py).
        self.held_elsewhere: Callable[[str], str | None] | None = None
        self.splices: dict[str, int] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        # picows logs every accepted connection at INFO; with thousands of links that is noise.
        logging.getLogger("picows.higgs.relay").setLevel(logging.WARNING)
        self._server = await ws_create_server(
            self._route,
            host,
            port,
            ssl=ssl_context,
            disconnect_on_exception=False,
            websocket_handshake_timeout=10,
            logger_name="higgs.relay",
            enable_auto_ping=False,  # our own sweep pings, so a dead peer gets 4008
            enable_auto_pong=True,
            # Larger than any relay frame, so an oversized frame is dropped and counted by our
            # parser instead of killing the link; control messages may be up to 1 MiB.
            max_frame_size=MAX_CONTROL_MESSAGE_SIZE + 1024,
            read_buffer_init_size=self.read_buffer_init_size,
        )
        self._spawn(self._ping_loop())
        self._spawn(self._activity_loop())
        log.info("relay: listening on %s", ", ".join(self.addresses))

    @property
    def addresses(self) -> list[str]:
        if self._server is None:
            return []
        return [f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in self._server.sockets]

    @property
    def port(self) -> int:
        """The bound port (useful after ``start(host, 0)``)."""
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.close(CloseCode.GOING_AWAY, "server shutting down")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self.bridges.close_all()
        deadline = time.monotonic() + 2.0
        while self._links and time.monotonic() < deadline:  # noqa: ASYNC110 - bounded wait
            await asyncio.sleep(0.01)

    # -- RelayHub (called by the services) ---------------------------------------------------

    def allow_node(self, node_id: str, token_hash: str) -> None:
        self.tables.allow_node(node_id, token_hash)

    def forget_node(self, node_id: str, reason: str) -> None:
        node = self.tables.forget_node(node_id)
        if node is not None and node.link is not None:
            node.link.close(CloseCode.UNAUTHORIZED, reason)

    def node_offline(self, node_id: str, reason: str) -> None:
        node = self.tables.nodes.get(node_id)
        if node is None:
            return
        for session in list(node.channels.values()):
            if session.client_link is not None:
                session.client_link.close(CloseCode.NODE_OFFLINE, reason)

    def open_session(self, session_id: str, channel: int, node_id: str, token_hash: str) -> None:
        self.tables.open_session(session_id, channel, node_id, token_hash)

    def bridge_session(self, session_id: str, endpoint: str | None) -> None:
        session = self.tables.sessions.get(session_id)
        if session is None:
            return
        try:
            session.udp_endpoint = None if endpoint is None else parse_endpoint(endpoint)
        except ValueError as exc:
            log.warning("relay: not bridging a session: %s", exc)
            session.udp_endpoint = None
        if session.udp_endpoint is None:
            self.bridges.close(session_id)

    def bridge_up(self, session: SessionEntry, payload: bytes, count: int, last: bool) -> bool:
        return self.bridges.up(session, payload, count, last)

    def close_session(self, session_id: str, reason: str) -> None:
        self.bridges.close(session_id)
        session = self.tables.close_session(session_id, reason, time.monotonic())
        link = None if session is None else session.client_link
        if link is not None:
            link.send_text(_wire(SessionClosed(reason=reason)))
            link.close(CloseCode.SESSION_CLOSED, reason)

    async def send_control(self, node_id: str, message: dict[str, Any]) -> bool:
        node = self.tables.nodes.get(node_id)
        if node is None or node.link is None:
            return False
        return node.link.send_text(message)

    def is_node_connected(self, node_id: str) -> bool:
        node = self.tables.nodes.get(node_id)
        return node is not None and node.link is not None and not node.link.closed

    def session_counters(self, session_id: str) -> tuple[int, int]:
        return self.tables.counters(session_id)

    # -- what a scale-out instance reconciles against the database (server/cluster/) --------

    def connected_nodes(self) -> list[str]:
        return [n.node_id for n in self.tables.nodes.values() if n.link is not None]

    def allowed_nodes(self) -> list[str]:
        return [n.node_id for n in self.tables.nodes.values() if n.token_hash is not None]

    def admitted_sessions(self) -> list[str]:
        return list(self.tables.sessions)

    # -- upgrade: routing and authentication (synchronous, from memory) ----------------------

    def _route(self, request: WSUpgradeRequest) -> WSUpgradeResponseWithListener | None:
        path = request.path.split(b"?", 1)[0]
        if path not in (NODE_PATH, SESSION_PATH):
            return None
        token_hash = _bearer_hash(request)
        refused = None if request.headers.get(VERSION_HEADER) == _VERSION else CloseCode.BAD_VERSION
        listener: _Link | SpliceLink
        if path == NODE_PATH:
            node = self.tables.node_by_token(token_hash) if token_hash else None
            if node is None:
                self._refused("node", token_hash)
                return _json_error(401, "unauthorized", "unknown or missing node token")
            listener = NodeLink(self, node, refused)
        else:
            session = self.tables.session_by_token(token_hash) if token_hash else None
            if session is None:
                self._refused("session", token_hash)
                return _json_error(401, "unauthorized", "unknown or missing relay token")
            splice = None if refused else self._splice(request, session)
            listener = splice or SessionLink(self, session, refused)
        response = WSUpgradeResponse.create_101_response({VERSION_HEADER: _VERSION})
        return WSUpgradeResponseWithListener(response, listener)

    def _splice(self, request: WSUpgradeRequest, session: SessionEntry) -> SpliceLink | None:
        """A splice to the hub holding the session's node, when that is another instance's."""
        if self.held_elsewhere is None or session.node.link is not None:
            return None
        if request.headers.get(SPLICED_HEADER):
            return None  # already spliced once: never bounce between hubs
        base = self.held_elsewhere(session.node.node_id)
        token = _bearer(request)
        if base is None or token is None:
            return None
        log.info(
            "relay: session link spliced to %s", base, extra={"session_id": session.session_id}
        )
        return SpliceLink(base + SESSION_PATH.decode(), token, self.splices)

    def _refused(self, kind: str, token_hash: str | None) -> None:
        reason = "unknown" if token_hash else "missing"
        self.counters.refused[(kind, reason)] += 1
        # Anyone can knock: counted always, logged a few times per window.
        self._quiet.log(
            f"refused {kind} links ({reason} credential)",
            logging.INFO,
            "relay: refused a %s link: %s credential",
            kind,
            reason,
            extra={"reason": reason},
        )

    # -- link registry (called by links) -------------------------------------------------------

    def attach_node_link(self, link: NodeLink) -> None:
        node = link.node
        if node.token_hash is None:  # forgotten between the upgrade and now
            link.close(CloseCode.UNAUTHORIZED, "node no longer allowed")
            return
        self._links.add(link)
        self.counters.node_links += 1
        old, node.link = node.link, link
        if old is not None:
            old.close(CloseCode.REPLACED, "replaced by a newer link")
        log.info("relay: node link up", extra={"node_id": node.node_id})
        hello = Hello(
            version=PROTOCOL_VERSION,
            node_id=node.node_id,
            heartbeat_interval_s=self.heartbeat_interval_s,
        )
        link.send_text(_wire(hello))
        self._spawn(self.events.node_link_up(node.node_id))

    def detach_node_link(self, link: NodeLink) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        self.counters.node_links -= 1
        if link.paused:
            link.release_clients()  # they waited for this link's socket, which is gone
        node = link.node
        if node.link is link:
            node.link = None
            log.info("relay: node link down", extra={"node_id": node.node_id})
            self._spawn(self.events.node_link_down(node.node_id))
            self.tables.release_node(node)

    def attach_session_link(self, link: SessionLink) -> None:
        session = link.session
        if session.closed:
            link.send_text(_wire(SessionClosed(reason=session.close_reason)))
            link.close(CloseCode.SESSION_CLOSED, session.close_reason)
            return
        self._links.add(link)
        self.counters.session_links += 1
        old, session.client_link = session.client_link, link
        if old is not None:
            old.close(CloseCode.REPLACED, "replaced by a newer link")
        node_link = session.node.link
        if node_link is not None and node_link.paused and link.raw is not None:
            link.raw.pause_reading()  # join the node's other clients in waiting
        log.info("relay: session link up", extra={"session_id": session.session_id})
        hello = Hello(
            version=PROTOCOL_VERSION, session_id=session.session_id, channel=session.channel
        )
        link.send_text(_wire(hello))

    def detach_session_link(self, link: SessionLink) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        self.counters.session_links -= 1
        session = link.session
        if session.client_link is link:
            session.client_link = None
            log.info("relay: session link down", extra={"session_id": session.session_id})

    # -- text frames -------------------------------------------------------------------------

    def node_text(self, link: NodeLink, data: bytes) -> None:
        try:
            message = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.counters.drops[DropReason.MALFORMED] += 1
            self._quiet.log(
                f"non-JSON text from node {link.node.node_id}",
                logging.INFO,
                "relay: node sent text that is not JSON",
                extra={"node_id": link.node.node_id},
            )
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self.counters.drops[DropReason.MALFORMED] += 1
            self._quiet.log(
                f"untyped JSON from node {link.node.node_id}",
                logging.INFO,
                "relay: node sent JSON without a type",
                extra={"node_id": link.node.node_id},
            )
            return
        self._spawn(self.events.node_message(link.node.node_id, message))

    def session_text(self, link: SessionLink, data: bytes) -> None:
        # Clients have no control messages to send yet; count and ignore whatever comes.
        try:
            message = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            message = None
        known = isinstance(message, dict) and isinstance(message.get("type"), str)
        self.counters.drops[DropReason.UNKNOWN_TYPE if known else DropReason.MALFORMED] += 1

    # -- write coalescing ----------------------------------------------------------------------

    def mark_dirty(self, link: _Link) -> None:
        if not self._net_armed and self._loop is not None:
            # Safety net: the source's last frame normally flushes, but a trailing PING is
            # answered inside picows without reaching us. One per loop pass is enough (it runs
            # after every read of this pass), not one per read.
            self._net_armed = True
            self._loop.call_soon(self._net_flush)
        self.dirty.append(link)

    def _net_flush(self) -> None:
        self._net_armed = False
        self.flush()

    def flush(self) -> None:
        dirty = self.dirty
        if not dirty:
            return
        self.dirty = []
        for link in dirty:
            link.flush_pending()

    # -- timers ------------------------------------------------------------------------------

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            try:
                self._ping_sweep()
            except Exception:
                log.exception("relay: ping sweep failed")

    def _ping_sweep(self) -> None:
        for link in list(self._links):
            if link.closed or link.transport is None:
                continue
            if link.alive:
                link.alive = False
                link.silent_s = 0.0
            else:
                link.silent_s += self.ping_interval_s
                if link.silent_s >= self.dead_after_s:
                    log.info("relay: closing a silent %s link", link.kind)
                    link.close(CloseCode.TIMEOUT, "no pong in time")
                    continue
            link.transport.send_ping()

    async def _activity_loop(self) -> None:
        while True:
            await asyncio.sleep(self.activity_interval_s)
            try:
                self._activity_sweep()
            except Exception:
                log.exception("relay: activity sweep failed")

    def _activity_sweep(self) -> None:
        for session_id in self.tables.active_sessions():
            try:
                self.events.session_activity(session_id)
            except Exception:
                log.exception("relay: session_activity failed")
        self.tables.expire_closed_channels(time.monotonic())

    # -- helpers -----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("relay: event handler failed", exc_info=task.exception())


def _conforms_to_the_seams(hub: RelayHubServer) -> tuple[RelayHub, LinkHost]:
    return hub, hub  # mypy checks here that the hub implements both protocols
