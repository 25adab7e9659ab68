"""A local UDP socket that bridges WireGuard's datagrams to a relay link.

Node side: one bridge per relayed session, bound to an ephemeral loopback port and sending to
the local WireGuard port, so WireGuard sees each relayed client as a distinct endpoint.
Client side: one bridge bound to ``127.0.0.1:0`` that WireGuard uses as its peer endpoint; it
learns WireGuard's address from the first datagram it receives (``peer=None``).

Everything received in one event-loop turn is handed over in one call (one relay frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterable

__all__ = ["UdpBridge"]

log = logging.getLogger(__name__)

Address = tuple[str, int]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, bridge: UdpBridge) -> None:
        self.bridge = bridge

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.bridge._received(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable while WireGuard restarts: nothing to do but carry on.
        log.debug("udp bridge: %s", exc)


class UdpBridge:
    """Use :meth:`open`; ``on_datagrams`` gets a list of datagrams once per loop turn."""

    def __init__(self, on_datagrams: Callable[[list[bytes]], None], peer: Address | None) -> None:
        self._on_datagrams = on_datagrams
        self._fixed_peer = peer is not None
        self.peer = peer
        self._transport: asyncio.DatagramTransport | None = None
        self._batch: list[bytes] = []
        self.received = 0
        self.sent = 0
        self.ignored = 0

    @classmethod
    async def open(
        cls,
        on_datagrams: Callable[[list[bytes]], None],
        *,
        local: Address = ("127.0.0.1", 0),
        peer: Address | None = None,
    ) -> UdpBridge:
        bridge = cls(on_datagrams, peer)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(bridge), local_addr=local
        )
        bridge._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # WireGuard sends in bursts; a bigger buffer absorbs them (best effort: the kernel
            # caps it at net.core.rmem_max).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        return bridge

    @property
    def local_address(self) -> Address:
        assert self._transport is not None
        host, port = self._transport.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    def send(self, datagrams: Iterable[bytes | memoryview]) -> None:
        """Sends datagrams to the peer (dropped while the peer is not known yet)."""
        transport, peer = self._transport, self.peer
        if transport is None or peer is None or transport.is_closing():
            return
        for datagram in datagrams:
            # bytes(): asyncio may keep a reference when the socket buffer is full, and the
            # caller's views are only valid during its callback.
            transport.sendto(bytes(datagram), peer)
            self.sent += 1

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _received(self, data: bytes, addr: Address) -> None:
        if self._fixed_peer:
            if addr != self.peer:
                self.ignored += 1
                return
        else:
            self.peer = addr  # follow WireGuard if it rebinds, like WireGuard roams
        self.received += 1
        if not self._batch:
            asyncio.get_running_loop().call_soon(self._deliver)
        self._batch.append(data)

    def _deliver(self) -> None:
        batch, self._batch = self._batch, []
        if batch:
            try:
                self._on_datagrams(batch)
            except Exception:
                log.exception("udp bridge: datagram handler failed")
