"""The relay hub of one instance among several: the local hub, plus the bus to the others.

The services keep calling one :class:`~higgs.server.relay.ports.RelayHub`; this one

* applies admissions (``allow_node``, ``open_session``, ``close_session``, …) to the local
  hub and publishes them, so that whichever instance holds the node's link (or the client's
  relay link) applies them too;
* sends a node's control message through the local hub when the link is here, else asks the
  holder (from ``node_presence``) over the bus and returns its answer; a message it cannot
  hand over is repaired by the holder's next reconciliation (``resync`` → ``sync``);
* answers ``is_node_connected`` from the local links and the presence map, so that routing on
  any instance sees every connected node.

Its events side (:class:`ClusterEvents`) claims and releases presence as links come and go.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from higgs.server.cluster.bus import ALL, Bus, Message, instance_subject
from higgs.server.relay.ports import RelayEvents
from higgs.server.store.presence import Holder

__all__ = ["ClusterEvents", "ClusterHub", "LocalHub"]

log = logging.getLogger(__name__)

# A command's holder answers at once (it only writes to a socket); past this the bus is
# taken to be down and the command is left to the reconciliation.
REQUEST_TIMEOUT_S = 1.0

# How long a change made here or heard on the bus is remembered (far longer than one
# reconciliation's database reads take, however loaded the machine).
CHANGE_MEMORY_S = 60.0


class LocalHub(Protocol):
    """What this module needs of :class:`~higgs.server.relay.hub.RelayHubServer`."""

    def allow_node(self, node_id: str, token_hash: str) -> None: ...
    def forget_node(self, node_id: str, reason: str) -> None: ...
    def node_offline(self, node_id: str, reason: str) -> None: ...
    def open_session(
        self, session_id: str, channel: int, node_id: str, token_hash: str
    ) -> None: ...
    def close_session(self, session_id: str, reason: str) -> None: ...
    def bridge_session(self, session_id: str, endpoint: str | None) -> None: ...
    async def send_control(self, node_id: str, message: dict[str, Any]) -> bool: ...
    def is_node_connected(self, node_id: str) -> bool: ...
    def session_counters(self, session_id: str) -> tuple[int, int]: ...
    def connected_nodes(self) -> list[str]: ...
    def allowed_nodes(self) -> list[str]: ...
    def admitted_sessions(self) -> list[str]: ...
    async def start(
        self, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> None: ...
    @property
    def port(self) -> int: ...
    async def stop(self) -> None: ...


def _text(message: Message, key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key}: missing or not a string")
    return value


class ClusterHub:
    def __init__(
        self,
        local: LocalHub,
        bus: Bus,
        instance_id: str,
        relay_base: str = "",
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.local = local
        self.bus = bus
        self.instance_id = instance_id
        self.relay_base = relay_base
        self.request_timeout_s = request_timeout_s
        # node id → the live instance holding its link; replaced whole by the reconciliation,
        # kept current between two of them by link_up/link_down on the bus.
        self.holders: dict[str, Holder] = {}
        # Called with a node whose command may be lost (sets node_presence.resync).
        self.on_lost: Callable[[str], Awaitable[None]] | None = None
        # Called with "clients" or "nodes" when another instance revoked a credential.
        self.on_invalidate: Callable[[str], None] | None = None
        self.lost: set[str] = set()  # nodes whose resync flag is not written yet
        self.dropped = 0  # malformed bus messages
        self._tasks: set[asyncio.Task[None]] = set()
        # "node:<id>", "session:<id>", "holder:<id>" → when it last changed here (monotonic).
        # The reconciliation reads the database while bus messages keep arriving: a snapshot
        # read from before a change must not undo it (a node allowed by the bus and already
        # linked here, then forgotten by a stale read, would be closed with 4001 for good).
        self._changed: dict[str, float] = {}

    async def attach(self) -> None:
        await self.bus.subscribe(ALL, self._on_broadcast)
        await self.bus.subscribe(instance_subject(self.instance_id), self._on_request)

    # -- ServedHub (the local listener) ------------------------------------------------------

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        await self.local.start(host, port, ssl_context)

    @property
    def port(self) -> int:
        return self.local.port

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.local.stop()

    # -- RelayHub ----------------------------------------------------------------------------

    def allow_node(self, node_id: str, token_hash: str) -> None:
        self._allow(node_id, token_hash)
        self.publish({"op": "allow_node", "node_id": node_id, "token_hash": token_hash})

    def forget_node(self, node_id: str, reason: str) -> None:
        self._forget(node_id, reason)
        self.publish({"op": "forget_node", "node_id": node_id, "reason": reason})

    def node_offline(self, node_id: str, reason: str) -> None:
        self.local.node_offline(node_id, reason)
        self.publish({"op": "node_offline", "node_id": node_id, "reason": reason})

    def open_session(self, session_id: str, channel: int, node_id: str, token_hash: str) -> None:
        self._open(session_id, channel, node_id, token_hash)
        self.publish(
            {
                "op": "open_session",
                "session_id": session_id,
                "channel": channel,
                "node_id": node_id,
                "token_hash": token_hash,
            }
        )

    def bridge_session(self, session_id: str, endpoint: str | None) -> None:
        # Every instance: the client's relay link may land on any of them.
        self.local.bridge_session(session_id, endpoint)
        self.publish({"op": "bridge_session", "session_id": session_id, "endpoint": endpoint})

    def close_session(self, session_id: str, reason: str) -> None:
        self._close(session_id, reason)
        self.publish({"op": "close_session", "session_id": session_id, "reason": reason})

    async def send_control(self, node_id: str, message: dict[str, Any]) -> bool:
        if self.local.is_node_connected(node_id):
            return await self.local.send_control(node_id, message)
        holder = self.holders.get(node_id)
        reply = None
        if holder is not None and holder.instance_id != self.instance_id:
            reply = await self.bus.request(
                instance_subject(holder.instance_id),
                {"op": "control", "node_id": node_id, "message": message},
                self.request_timeout_s,
            )
        if reply is not None and reply.get("delivered") is True:
            return True
        # Not handed over: the link may be on an instance we have not heard of yet, or the
        # bus is down. The flag in the database reaches the holder whatever the bus does;
        # while the database cannot take it either, the node waits in ``lost`` for the next
        # reconciliation.
        self.lost.add(node_id)
        if self.on_lost is not None:
            try:
                await self.on_lost(node_id)
            except Exception:
                log.warning(
                    "resync flag not written; the reconciliation retries",
                    extra={"node_id": node_id},
                )
            else:
                self.lost.discard(node_id)
        return False

    def is_node_connected(self, node_id: str) -> bool:
        return self.local.is_node_connected(node_id) or node_id in self.holders

    def session_counters(self, session_id: str) -> tuple[int, int]:
        return self.local.session_counters(session_id)

    # -- presence between two reconciliations ------------------------------------------------

    def link_up(self, node_id: str) -> None:
        self.holders[node_id] = Holder(self.instance_id, self.relay_base)
        self._touch("holder", node_id)
        self.publish({"op": "link_up", "node_id": node_id, "relay_base": self.relay_base})

    def link_down(self, node_id: str) -> None:
        held = self.holders.get(node_id)
        if held is not None and held.instance_id == self.instance_id:
            del self.holders[node_id]
        self._touch("holder", node_id)
        self.publish({"op": "link_down", "node_id": node_id})

    # -- what the reconciliation may change --------------------------------------------------

    def _touch(self, kind: str, ident: str) -> None:
        self._changed[f"{kind}:{ident}"] = time.monotonic()

    def changed_since(self, kind: str, ident: str, since: float) -> bool:
        """Whether ``kind`` ("node", "session", "holder") ``ident`` changed here (a call or
        a bus message) at or after ``since``: a database read begun at ``since`` may not
        show that change yet, so the reconciliation leaves it as it is."""
        return self._changed.get(f"{kind}:{ident}", float("-inf")) >= since

    def set_holders(self, snapshot: dict[str, Holder], since: float) -> None:
        """Replaces the presence map by ``snapshot`` (read from the database at ``since``),
        except for the nodes whose link_up/link_down arrived meanwhile."""
        fresh = dict(snapshot)
        for key in [k for k, t in self._changed.items() if t >= since]:
            kind, _, node_id = key.partition(":")
            if kind != "holder":
                continue
            live = self.holders.get(node_id)
            if live is None:
                fresh.pop(node_id, None)
            else:
                fresh[node_id] = live
        self.holders = {n: h for n, h in fresh.items() if h.instance_id != self.instance_id}
        horizon = time.monotonic() - CHANGE_MEMORY_S
        self._changed = {k: t for k, t in self._changed.items() if t >= horizon}

    def _allow(self, node_id: str, token_hash: str) -> None:
        self._touch("node", node_id)
        self.local.allow_node(node_id, token_hash)

    def _forget(self, node_id: str, reason: str) -> None:
        self._touch("node", node_id)
        self.local.forget_node(node_id, reason)

    def _open(self, session_id: str, channel: int, node_id: str, token_hash: str) -> None:
        self._touch("session", session_id)
        self.local.open_session(session_id, channel, node_id, token_hash)

    def _close(self, session_id: str, reason: str) -> None:
        self._touch("session", session_id)
        self.local.close_session(session_id, reason)

    def invalidate(self, kind: str) -> None:
        self.publish({"op": "invalidate", "kind": kind})

    def held_elsewhere(self, node_id: str) -> str | None:
        """The relay base of another instance holding the node's link (the local hub splices
        a client's session link there); None when the link is here or nowhere known."""
        if self.local.is_node_connected(node_id):
            return None
        holder = self.holders.get(node_id)
        if holder is None or holder.instance_id == self.instance_id or not holder.relay_base:
            return None
        return holder.relay_base

    def relay_base_for(self, node_id: str) -> str | None:
        """The relay base of the instance holding the node's link (a relayed session's client
        must attach there); None when unknown."""
        if self.local.is_node_connected(node_id):
            return self.relay_base
        holder = self.holders.get(node_id)
        return holder.relay_base if holder is not None else None

    # -- the bus -----------------------------------------------------------------------------

    def publish(self, message: Message) -> None:
        message["from"] = self.instance_id
        self._spawn(self.bus.publish(ALL, message))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_broadcast(self, m: Message) -> Message | None:
        sender = m.get("from")
        if sender == self.instance_id:
            return None
        try:
            self._apply(m, _text(m, "from"))
        except (ValueError, TypeError) as exc:
            self.dropped += 1
            log.warning("malformed bus message dropped", extra={"problem": str(exc)})
        return None

    def _apply(self, m: Message, sender: str) -> None:
        op = _text(m, "op")
        if op == "allow_node":
            self._allow(_text(m, "node_id"), _text(m, "token_hash"))
        elif op == "forget_node":
            self._forget(_text(m, "node_id"), _text(m, "reason"))
        elif op == "node_offline":
            self.local.node_offline(_text(m, "node_id"), _text(m, "reason"))
        elif op == "open_session":
            channel = m.get("channel")
            if not isinstance(channel, int):
                raise ValueError("channel: not an integer")
            self._open(_text(m, "session_id"), channel, _text(m, "node_id"), _text(m, "token_hash"))
        elif op == "close_session":
            self._close(_text(m, "session_id"), _text(m, "reason"))
        elif op == "bridge_session":
            endpoint = m.get("endpoint")
            if endpoint is not None and not isinstance(endpoint, str):
                raise ValueError("endpoint: not a string or null")
            self.local.bridge_session(_text(m, "session_id"), endpoint)
        elif op == "link_up":
            node_id = _text(m, "node_id")
            if not self.local.is_node_connected(node_id):
                self.holders[node_id] = Holder(sender, _text(m, "relay_base"))
                self._touch("holder", node_id)
        elif op == "link_down":
            node_id = _text(m, "node_id")
            held = self.holders.get(node_id)
            if held is not None and held.instance_id == sender:
                del self.holders[node_id]
                self._touch("holder", node_id)
        elif op == "invalidate":
            kind = _text(m, "kind")
            if kind not in ("clients", "nodes"):
                raise ValueError(f"kind: {kind!r}")
            if self.on_invalidate is not None:
                self.on_invalidate(kind)
        else:
            raise ValueError(f"op: unknown {op!r}")

    async def _on_request(self, m: Message) -> Message | None:
        try:
            if _text(m, "op") != "control":
                raise ValueError("op: not control")
            node_id = _text(m, "node_id")
            message = m.get("message")
            if not isinstance(message, dict):
                raise ValueError("message: not an object")
        except ValueError as exc:
            self.dropped += 1
            log.warning("malformed bus request dropped", extra={"problem": str(exc)})
            return {"delivered": False}
        return {"delivered": await self.local.send_control(node_id, message)}


class ClusterEvents:
    """The local hub's events, with presence claimed and released around them."""

    def __init__(
        self,
        inner: RelayEvents,
        claim: Callable[[str], Awaitable[None]],
        release: Callable[[str], Awaitable[None]],
    ) -> None:
        self.inner = inner
        self.hub: ClusterHub | None = None
        self._claim = claim
        self._release = release

    async def node_link_up(self, node_id: str) -> None:
        if self.hub is not None:
            self.hub.link_up(node_id)
        try:
            await self._claim(node_id)
        except Exception:
            log.exception(
                "presence claim failed; the reconciliation retries", extra={"node_id": node_id}
            )
        await self.inner.node_link_up(node_id)

    async def node_link_down(self, node_id: str) -> None:
        if self.hub is not None and self.hub.local.is_node_connected(node_id):
            return  # replaced by a newer link on this instance
        if self.hub is not None:
            self.hub.link_down(node_id)
        try:
            await self._release(node_id)
        except Exception:
            log.exception(
                "presence release failed; the reconciliation retries", extra={"node_id": node_id}
            )
        await self.inner.node_link_down(node_id)

    async def node_message(self, node_id: str, message: dict[str, Any]) -> None:
        await self.inner.node_message(node_id, message)

    def session_activity(self, session_id: str) -> None:
        self.inner.session_activity(session_id)
