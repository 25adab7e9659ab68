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
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from picows import (
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)
from prometheus_client import CollectorRegistry

from higgs.common.secrets import tokens_equal
from higgs.protocol.control import MAX_CONTROL_MESSAGE_SIZE
from higgs.protocol.relay import PROTOCOL_VERSION, VERSION_HEADER, CloseCode, DropReason
from higgs.server.relay.links import NodeLink, SessionLink, _Link
from higgs.server.relay.metrics import RelayCounters, RelayMetricsCollector
from higgs.server.relay.ports import RelayEvents, RelayHub

__all__ = ["NODE_PATH", "SESSION_PATH", "NodeEntry", "RelayHubServer", "SessionEntry"]

log = logging.getLogger(__name__)

NODE_PATH = b"/v1/relay/node"
SESSION_PATH = b"/v1/relay/session"
_CLOSED_MEMORY = 65_536  # closed sessions remembered (for 4002 and their counters)
_CLOSED_CHANNEL_TTL_S = 120.0  # node frames for a just-closed channel count as session_closed
_VERSION = str(PROTOCOL_VERSION)


@dataclass(slots=True, eq=False)
class NodeEntry:
    node_id: str
    token_hash: str | None = None
    link: NodeLink | None = None
    channels: dict[int, SessionEntry] = field(default_factory=dict)
    closed_channels: dict[int, float] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class SessionEntry:
    session_id: str
    channel: int
    node: NodeEntry
    token_hash: str
    client_link: SessionLink | None = None
    closed: bool = False
    close_reason: str = ""
    up_datagrams: int = 0  # client → node
    up_bytes: int = 0
    down_datagrams: int = 0  # node → client
    down_bytes: int = 0
    reported: int = 0


def _bearer_hash(request: WSUpgradeRequest) -> str | None:
    value = request.headers.get("Authorization")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return hashlib.sha256(token.encode()).hexdigest()


def _json_error(status: int, code: str, message: str) -> WSUpgradeResponseWithListener:
    body = json.dumps({"error": code, "message": message}).encode()
    response = WSUpgradeResponse.create_error_response(
        status, body, {"Content-Type": "application/json"}
    )
    return WSUpgradeResponseWithListener(response, None)


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
        registry.register(RelayMetricsCollector(self.counters, self._traffic_totals))
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
        self._nodes: dict[str, NodeEntry] = {}
        self._node_tokens: dict[str, NodeEntry] = {}
        self._sessions: dict[str, SessionEntry] = {}
        self._session_tokens: dict[str, SessionEntry] = {}
        self._closed: OrderedDict[str, SessionEntry] = OrderedDict()
        self._closed_tokens: dict[str, SessionEntry] = {}
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

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
        deadline = time.monotonic() + 2.0
        while self._links and time.monotonic() < deadline:  # noqa: ASYNC110 - bounded wait
            await asyncio.sleep(0.01)

    # -- RelayHub (called by the services) ---------------------------------------------------

    def allow_node(self, node_id: str, token_hash: str) -> None:
        node = self._nodes.get(node_id)
        if node is None:
            node = self._nodes[node_id] = NodeEntry(node_id)
        if node.token_hash is not None and not tokens_equal(node.token_hash, token_hash):
            self._node_tokens.pop(node.token_hash, None)
        node.token_hash = token_hash
        self._node_tokens[token_hash] = node

    def forget_node(self, node_id: str, reason: str) -> None:
        node = self._nodes.get(node_id)
        if node is None:
            return
        if node.token_hash is not None:
            self._node_tokens.pop(node.token_hash, None)
            node.token_hash = None
        if node.link is not None:
            node.link.close(CloseCode.UNAUTHORIZED, reason)
        if not node.channels:
            del self._nodes[node_id]

    def open_session(self, session_id: str, channel: int, node_id: str, token_hash: str) -> None:
        existing = self._sessions.get(session_id)
        if existing is not None:
            if existing.channel == channel and existing.node.node_id == node_id:
                self._session_tokens.pop(existing.token_hash, None)
                existing.token_hash = token_hash
                self._session_tokens[token_hash] = existing
                return
            raise ValueError(f"session {session_id} is already open on another channel or node")
        node = self._nodes.get(node_id)
        if node is None:
            node = self._nodes[node_id] = NodeEntry(node_id)
        taken = node.channels.get(channel)
        if taken is not None:
            raise ValueError(f"channel {channel} of node {node_id} is used by {taken.session_id}")
        session = SessionEntry(session_id, channel, node, token_hash)
        self._sessions[session_id] = session
        self._session_tokens[token_hash] = session
        node.channels[channel] = session
        node.closed_channels.pop(channel, None)

    def close_session(self, session_id: str, reason: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        session.closed = True
        session.close_reason = reason
        self._session_tokens.pop(session.token_hash, None)
        node = session.node
        if node.channels.get(session.channel) is session:
            del node.channels[session.channel]
            node.closed_channels[session.channel] = time.monotonic()
        if not node.channels and node.token_hash is None and node.link is None:
            self._nodes.pop(node.node_id, None)
        self._remember_closed(session)
        link = session.client_link
        if link is not None:
            link.send_text({"type": "session_closed", "reason": reason})
            link.close(CloseCode.SESSION_CLOSED, reason)

    async def send_control(self, node_id: str, message: dict[str, Any]) -> bool:
        node = self._nodes.get(node_id)
        if node is None or node.link is None:
            return False
        return node.link.send_text(message)

    def is_node_connected(self, node_id: str) -> bool:
        node = self._nodes.get(node_id)
        return node is not None and node.link is not None and not node.link.closed

    def session_counters(self, session_id: str) -> tuple[int, int]:
        session = self._sessions.get(session_id) or self._closed.get(session_id)
        if session is None:
            return (0, 0)
        return (
            session.up_datagrams + session.down_datagrams,
            session.up_bytes + session.down_bytes,
        )

    # -- upgrade: routing and authentication (synchronous, from memory) ----------------------

    def _route(self, request: WSUpgradeRequest) -> WSUpgradeResponseWithListener | None:
        path = request.path.split(b"?", 1)[0]
        if path not in (NODE_PATH, SESSION_PATH):
            return None
        token_hash = _bearer_hash(request)
        refused = None if request.headers.get(VERSION_HEADER) == _VERSION else CloseCode.BAD_VERSION
        listener: _Link
        if path == NODE_PATH:
            node = self._node_tokens.get(token_hash) if token_hash else None
            if node is None:
                log.info("relay: refused a node link: unknown or missing credential")
                return _json_error(401, "unauthorized", "unknown or missing node token")
            listener = NodeLink(self, node, refused)
        else:
            session = self._session_tokens.get(token_hash) if token_hash else None
            if session is None and token_hash:
                session = self._closed_tokens.get(token_hash)
            if session is None:
                log.info("relay: refused a session link: unknown or missing credential")
                return _json_error(401, "unauthorized", "unknown or missing relay token")
            listener = SessionLink(self, session, refused)
        response = WSUpgradeResponse.create_101_response({VERSION_HEADER: _VERSION})
        return WSUpgradeResponseWithListener(response, listener)

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
        link.send_text(
            {
                "type": "hello",
                "version": PROTOCOL_VERSION,
                "node_id": node.node_id,
                "heartbeat_interval_s": self.heartbeat_interval_s,
            }
        )
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
            if not node.channels and node.token_hash is None:
                self._nodes.pop(node.node_id, None)

    def attach_session_link(self, link: SessionLink) -> None:
        session = link.session
        if session.closed:
            link.send_text({"type": "session_closed", "reason": session.close_reason})
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
        link.send_text(
            {
                "type": "hello",
                "version": PROTOCOL_VERSION,
                "session_id": session.session_id,
                "channel": session.channel,
            }
        )

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
            log.info("relay: node sent text that is not JSON", extra={"node_id": link.node.node_id})
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self.counters.drops[DropReason.MALFORMED] += 1
            log.info("relay: node sent JSON without a type", extra={"node_id": link.node.node_id})
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
        for session in self._sessions.values():
            seen = session.up_datagrams + session.down_datagrams
            if seen != session.reported:
                session.reported = seen
                try:
                    self.events.session_activity(session.session_id)
                except Exception:
                    log.exception("relay: session_activity failed")
        cutoff = time.monotonic() - _CLOSED_CHANNEL_TTL_S
        for node in self._nodes.values():
            if node.closed_channels:
                for channel, closed_at in list(node.closed_channels.items()):
                    if closed_at < cutoff:
                        del node.closed_channels[channel]

    # -- helpers -----------------------------------------------------------------------------

    def _traffic_totals(self) -> tuple[int, int, int, int]:
        """(datagrams, bytes) to node, then to client, since start: summed at scrape time so
        the data path only counts per session."""
        c = self.counters
        up_d, up_b = c.closed_up_datagrams, c.closed_up_bytes
        down_d, down_b = c.closed_down_datagrams, c.closed_down_bytes
        for s in self._sessions.values():
            up_d += s.up_datagrams
            up_b += s.up_bytes
            down_d += s.down_datagrams
            down_b += s.down_bytes
        return up_d, up_b, down_d, down_b

    def _remember_closed(self, session: SessionEntry) -> None:
        c = self.counters
        c.closed_up_datagrams += session.up_datagrams
        c.closed_up_bytes += session.up_bytes
        c.closed_down_datagrams += session.down_datagrams
        c.closed_down_bytes += session.down_bytes
        self._closed[session.session_id] = session
        self._closed_tokens[session.token_hash] = session
        while len(self._closed) > _CLOSED_MEMORY:
            _, old = self._closed.popitem(last=False)
            self._closed_tokens.pop(old.token_hash, None)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("relay: event handler failed", exc_info=task.exception())


def _conforms_to_the_seam(hub: RelayHubServer) -> RelayHub:
    return hub  # mypy checks here that the hub implements the RelayHub protocol
