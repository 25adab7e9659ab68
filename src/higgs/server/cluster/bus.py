"""The message bus between API instances, as the server sees it (docs/scaleout.md).

Two kinds of message, both JSON objects, both at most once:

* :meth:`Bus.publish` on :data:`ALL` reaches every instance that is subscribed at that moment
  (hub admissions, presence changes, credential invalidations). A lost one is repaired by the
  receivers' next reconciliation from the database, never by a retry.
* :meth:`Bus.request` on an instance's own subject (:func:`instance_subject`) waits for its
  answer (a command for a node whose link that instance holds); ``None`` when nobody answered
  in time, and the caller falls back to the database (``node_presence.resync``).

:class:`LocalBus` is the in-process implementation: the embedded server needs no bus at all,
and tests run two instances' coordinators in one process on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

__all__ = ["ALL", "Bus", "Handler", "LocalBus", "Message", "instance_subject"]

log = logging.getLogger(__name__)

Message = dict[str, Any]
# A subscriber: returns the reply to a request (ignored for a publish).
Handler = Callable[[Message], Awaitable[Message | None]]

ALL = "higgs.cluster.all"


def instance_subject(instance_id: str) -> str:
    return f"higgs.cluster.instance.{instance_id}"


class Bus(Protocol):
    async def subscribe(self, subject: str, handler: Handler) -> None: ...

    async def publish(self, subject: str, message: Message) -> None:
        """Fire and forget; never raises for a bus that is down (the message is lost)."""

    async def request(self, subject: str, message: Message, timeout_s: float) -> Message | None:
        """The first answer, or None (no subscriber, timeout, bus down)."""

    @property
    def connected(self) -> bool: ...

    async def close(self) -> None: ...


class LocalBus:
    """Subjects in a dict; handlers run on the caller's event loop."""

    def __init__(self) -> None:
        self._subs: dict[str, list[Handler]] = {}
        self.up = True  # tests cut the bus with this

    @property
    def connected(self) -> bool:
        return self.up

    async def subscribe(self, subject: str, handler: Handler) -> None:
        self._subs.setdefault(subject, []).append(handler)

    async def publish(self, subject: str, message: Message) -> None:
        if not self.up:
            return
        for handler in list(self._subs.get(subject, ())):
            try:
                await handler(dict(message))
            except Exception:
                log.exception("bus handler failed", extra={"subject": subject})

    async def request(self, subject: str, message: Message, timeout_s: float) -> Message | None:
        handlers = self._subs.get(subject)
        if not self.up or not handlers:
            return None
        try:
            return await asyncio.wait_for(handlers[0](dict(message)), timeout_s)
        except TimeoutError:
            return None

    async def close(self) -> None:
        self._subs.clear()
