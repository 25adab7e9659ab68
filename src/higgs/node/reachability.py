"""The node's half of the reachability check (docs/protocol.md §2.9): hear the server's probe
on the WireGuard port and post its nonce back, so the server offers the mapping as the
direct path.

While a mapping is announced, a read-only tap (``higgs.osnet.probe_tap``) sees probes that
reach the WireGuard port; each new nonce is confirmed once. With no confirmed probe within
``VERIFY_WITHIN_S`` of the announcement the mapping counts as unverified (``status`` and
``diagnose`` say so: the router mapped the port but the internet cannot reach it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from higgs.common.errors import HiggsError
from higgs.osnet.probe_tap import ProbeTap

__all__ = ["VERIFY_WITHIN_S", "ProbeListener"]

log = logging.getLogger(__name__)

VERIFY_WITHIN_S = 30.0


class ProbeListener:
    def __init__(
        self,
        port: int,
        confirm: Callable[[str], Awaitable[bool]],
        on_result: Callable[[bool], None],
    ) -> None:
        self.port = port
        self._confirm = confirm
        self._on_result = on_result
        self._tap: ProbeTap | None = None
        self._seen: set[bytes] = set()
        self._deadline: asyncio.TimerHandle | None = None
        self._verified = False
        self.probes = 0

    def expect(self) -> None:
        """A (new) mapping was announced: listen, and give the server VERIFY_WITHIN_S."""
        loop = asyncio.get_running_loop()
        self._verified = False
        if self._tap is None:
            try:
                self._tap = ProbeTap(self.port)
            except HiggsError as exc:
                log.warning("cannot hear reachability probes", extra={"why": str(exc)})
                return
            loop.add_reader(self._tap.fileno(), self._readable)
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = loop.call_later(VERIFY_WITHIN_S, self._expired)

    def _expired(self) -> None:
        if not self._verified:
            log.warning(
                "no reachability probe arrived: the router mapped the port, but the server "
                "cannot reach it through the mapping"
            )
            self._on_result(False)

    def _readable(self) -> None:
        assert self._tap is not None
        for nonce in self._tap.read():
            self.probes += 1
            if nonce in self._seen:
                continue
            self._seen.add(nonce)
            asyncio.get_running_loop().create_task(self._post(nonce.hex()), name="probe-confirm")

    async def _post(self, nonce: str) -> None:
        try:
            ok = await self._confirm(nonce)
        except Exception as exc:  # the server API logs its own failures; keep listening
            log.warning("cannot confirm a reachability probe", extra={"why": str(exc)})
            return
        if ok:
            self._verified = True
            if self._deadline is not None:
                self._deadline.cancel()
            self._on_result(True)

    def stop(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._tap is not None:
            asyncio.get_running_loop().remove_reader(self._tap.fileno())
            self._tap.close()
            self._tap = None
