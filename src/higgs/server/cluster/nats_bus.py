"""The :class:`~higgs.server.cluster.bus.Bus` on NATS core (Debian ``nats-server``).

Core NATS, not JetStream: the design wants at-most-once delivery (a stale command replayed
after a reconnect would be worse than a lost one, which reconciliation repairs), request/reply
(a command's sender learns whether the holder delivered it) and a client that reconnects by
itself. While disconnected, nats-py buffers publishes (``pending_size``) and sends them after
the reconnect; requests fail at once or time out, and the caller falls back to the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from higgs.server.cluster.bus import Handler, Message

__all__ = ["NatsBus"]

log = logging.getLogger(__name__)

RECONNECT_WAIT_S = 0.5
PENDING_BYTES = 2 * 1024 * 1024


def _decode(data: bytes) -> Message | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class NatsBus:
    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self._nc: Client | None = None
        self._subs: list[tuple[str, Handler]] = []
        self._dialer: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, url: str, name: str) -> NatsBus:
        """Connects, or keeps trying in the background if the bus is down at start: an
        instance serves the API without the bus (reconciliation carries the state)."""
        bus = cls(url, name)
        if not await bus._dial():
            log.warning("bus unreachable at start; retrying in the background", extra={"bus": url})
            bus._dialer = asyncio.get_running_loop().create_task(bus._redial())
        return bus

    async def _dial(self) -> bool:
        url = self.url

        async def disconnected() -> None:
            log.warning("bus disconnected", extra={"bus": url})

        async def reconnected() -> None:
            log.info("bus reconnected", extra={"bus": url})

        async def error(exc: Exception) -> None:
            log.debug("bus error", extra={"bus": url, "problem": str(exc)})

        try:
            nc = await nats.connect(
                url,
                name=self.name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=RECONNECT_WAIT_S,
                connect_timeout=2,
                ping_interval=2,
                max_outstanding_pings=2,
                pending_size=PENDING_BYTES,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
            )
        except (NatsError, OSError, TimeoutError) as exc:
            log.debug("bus connect failed", extra={"bus": url, "problem": str(exc)})
            return False
        self._nc = nc
        for subject, handler in self._subs:
            await self._subscribe(nc, subject, handler)
        return True

    async def _redial(self) -> None:
        while not await self._dial():  # noqa: ASYNC110 - a retry period, no event to wait for
            await asyncio.sleep(RECONNECT_WAIT_S)
        log.info("bus connected", extra={"bus": self.url})

    @property
    def connected(self) -> bool:
        return self._nc is not None and bool(self._nc.is_connected)

    async def subscribe(self, subject: str, handler: Handler) -> None:
        self._subs.append((subject, handler))
        if self._nc is not None:
            await self._subscribe(self._nc, subject, handler)

    async def _subscribe(self, nc: Client, subject: str, handler: Handler) -> None:
        async def on_message(msg: Msg) -> None:
            message = _decode(msg.data)
            if message is None:
                log.warning("malformed bus message dropped", extra={"subject": subject})
                return
            try:
                reply = await handler(message)
            except Exception:
                log.exception("bus handler failed", extra={"subject": subject})
                return
            if msg.reply and reply is not None:
                try:
                    await msg.respond(json.dumps(reply).encode())
                except (NatsError, OSError) as exc:
                    log.debug("bus reply lost", extra={"problem": str(exc)})

        await nc.subscribe(subject, cb=on_message)

    async def publish(self, subject: str, message: Message) -> None:
        if self._nc is None:
            return
        try:
            await self._nc.publish(subject, json.dumps(message).encode())
        except (NatsError, OSError) as exc:
            log.debug("bus publish lost", extra={"subject": subject, "problem": str(exc)})

    async def request(self, subject: str, message: Message, timeout_s: float) -> Message | None:
        if self._nc is None or not self._nc.is_connected:
            return None
        try:
            msg = await self._nc.request(subject, json.dumps(message).encode(), timeout=timeout_s)
        except (NatsError, OSError, TimeoutError) as exc:
            log.debug("bus request unanswered", extra={"subject": subject, "problem": str(exc)})
            return None
        return _decode(msg.data)

    async def close(self) -> None:
        if self._dialer is not None:
            self._dialer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dialer
        if self._nc is None:
            return
        try:
            await asyncio.wait_for(self._nc.drain(), 2)
        except (NatsError, OSError, TimeoutError):
            await self._nc.close()
