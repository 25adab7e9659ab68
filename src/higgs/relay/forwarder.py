"""The userspace side of the UDP relay: one thread, one socket per session port.

It runs every datagram that reaches the relay's sockets through the session's
:class:`~higgs.relay.binding.Binding` and sends what it says; on bind and rebind it hands the
flow to the kernel path (when there is one), and takes it back while a handshake from a new
source is pending, so that handshake and its answer pass here (docs/protocol.md §5.3).

Off the asyncio loop on purpose: one datagram per loop wakeup costs ~6x a blocking loop
(research/datapath.md §2). Each ready socket is drained in a batch of up to ``BATCH``
non-blocking reads before the next ``poll``. CPython has no ``recvmmsg``; the drain loop gets
most of its benefit without a C binding.

Kernel changes (``nft``, ``conntrack``) run in this thread too: they happen only on bind,
rebind and candidate handshakes, and ordering with the sends around them matters (the
answer is sent before the flow enters the kernel; a candidate leaves the kernel before its
initiation is sent).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from higgs.relay import wgmsg
from higgs.relay.binding import Addr, Binding, Event
from higgs.relay.metrics import RelayStats

__all__ = ["BATCH", "Forwarder", "KernelPath", "SessionSpec"]

log = logging.getLogger(__name__)

BATCH = 64
TICK_S = 0.25
WITHDRAW_S = 5.0  # a candidate's answer comes within REKEY_TIMEOUT, or not at all
# A flow goes into the kernel this long after its (re)bind, not at once: the initiator answers
# the response with a keepalive one round trip later, and the responder counts the handshake
# complete only when that keepalive arrives. Offloading at once queued it behind the nft and
# conntrack commands, and the queued tail from a bound leg must be dropped (``in_kernel``), so
# the responder waited for the next initiation (5 s and more): the first-handshake flake.
CONFIRM_S = 1.0
_MAX_DATAGRAM = 65535
_MIN_DATA = wgmsg.MIN_DATA_SIZE
_SOCKET_BUFFER = 4 << 20


class KernelPath(Protocol):
    def add(self, port: int, client: Addr, node: Addr) -> None: ...
    def delete(self, port: int, client: Addr, node: Addr) -> None: ...


@dataclass(frozen=True)
class SessionSpec:
    session_id: str
    port: int
    client_key: bytes
    node_key: bytes
    # The (client, node) legs an earlier run of the relay bound (from the lease): hints for
    # the new binding after a restart (Binding.restore). Not part of the session's identity.
    seen: tuple[Addr | None, Addr | None] = field(default=(None, None), compare=False)
    # The client leg's starting address: the app of a direct device whose node lost its
    # direct endpoint, where the server last saw it (Binding.client_start). Read with the
    # lease, when the relay opens the port.
    start: Addr | None = field(default=None, compare=False)


@dataclass(slots=True)
class _Session:
    spec: SessionSpec
    sock: socket.socket
    binding: Binding
    kernel: tuple[Addr, Addr] | None = None  # (client, node) installed in the kernel
    withdrawn_until: float = 0.0


class Forwarder:
    def __init__(
        self,
        relay_ip: str,
        stats: RelayStats,
        *,
        kernel: KernelPath | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.relay_ip, self.stats, self.kernel, self._clock = relay_ip, stats, kernel, clock
        self._family = socket.AF_INET6 if ":" in relay_ip else socket.AF_INET
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._sessions: dict[int, _Session] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="udp-relay", daemon=True)
        self._legs: dict[int, tuple[Addr | None, Addr | None]] = {}
        # One receive buffer for every socket, read in place: no allocation per datagram on
        # the hot path (recvfrom(65535) allocated and shrank a 64 KiB bytes object each time).
        self._buf = bytearray(_MAX_DATAGRAM)
        self._view = memoryview(self._buf)

    # --- control (any thread) ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        self._thread.join(timeout=10)
        for session in list(self._sessions.values()):
            self._close(session)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _call(self, fn: Callable[[], None]) -> None:
        """Runs ``fn`` in the forwarder thread and waits for it (errors are re-raised)."""
        if not self._thread.is_alive():
            fn()
            return
        done = threading.Event()
        failure: list[BaseException] = []

        def wrapped() -> None:
            try:
                fn()
            except BaseException as exc:  # handed back to the caller
                failure.append(exc)
            finally:
                done.set()

        self._commands.put(wrapped)
        self._wake()
        if not done.wait(timeout=30):
            raise TimeoutError("the UDP relay thread did not answer")
        if failure:
            raise failure[0]

    def add(self, spec: SessionSpec) -> None:
        """Opens the session's socket on ``relay_ip:port`` (OSError if the port is taken)."""
        self._call(lambda: self._add(spec))

    def remove(self, port: int) -> None:
        self._call(lambda: self._remove(port))

    def ports(self) -> set[int]:
        return set(self._legs)

    def legs(self) -> dict[int, tuple[Addr | None, Addr | None]]:
        """Each port's bound (client, node) addresses, as the relay observed them."""
        return dict(self._legs)

    # --- the thread -------------------------------------------------------------------------

    def _add(self, spec: SessionSpec) -> None:
        if spec.port in self._sessions:
            return
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            sock.bind((self.relay_ip, spec.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        binding = Binding(spec.client_key, spec.node_key, client_start=spec.start)
        binding.restore(*spec.seen)
        session = _Session(spec, sock, binding)
        self._sessions[spec.port] = session
        self._legs[spec.port] = (binding.client, binding.node)
        if binding.bound:
            log.info(
                "relay port %d: restored client %s node %s", spec.port, binding.client, binding.node
            )
        self._selector.register(sock, selectors.EVENT_READ, session)
        self.stats.ports_leased = len(self._sessions)

    def _remove(self, port: int) -> None:
        session = self._sessions.pop(port, None)
        self._legs.pop(port, None)
        self.stats.ports_leased = len(self._sessions)
        if session is not None:
            self._close(session)

    def _close(self, session: _Session) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(session.sock)
        session.sock.close()
        self._withdraw(session)

    def _run(self) -> None:
        next_tick = self._clock() + TICK_S
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=TICK_S):
                if key.data is None:
                    self._drain_commands()
                else:
                    self._drain(key.data)
            now = self._clock()
            if now >= next_tick:
                next_tick = now + TICK_S
                self._tick(now)
        self._drain_commands()

    def _drain_commands(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            command()

    def _drain(self, session: _Session) -> None:
        sock, binding, stats = session.sock, session.binding, self.stats
        now = self._clock()
        v6 = self._family == socket.AF_INET6
        buf, view = self._buf, self._view
        recv_into, sendto = sock.recvfrom_into, sock.sendto
        # The hot path (data between the bound legs, no kernel flow) is inlined with local
        # counters: the Binding would answer the same (rule 2), one call and verdict dearer.
        client, node = binding.client, binding.node
        hot = session.kernel is None and client is not None and node is not None
        fast_packets = fast_bytes = 0
        try:
            for _ in range(BATCH):
                try:
                    n, source = recv_into(buf)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:  # ICMP port unreachable from a leg, reported here
                    log.debug("relay port %d: %s", session.spec.port, exc)
                    continue
                if v6:
                    source = source[:2]  # (host, port, flowinfo, scope): a leg is host and port
                if hot and n >= _MIN_DATA and buf[0] == 4 and not (buf[1] or buf[2] or buf[3]):
                    to = node if source == client else client if source == node else None
                    if to is not None:
                        try:
                            sendto(view[:n], to)
                        except OSError as exc:
                            log.debug("relay port %d: send to %s: %s", session.spec.port, to,
                                      exc)  # fmt: skip
                            stats.drop("send_failed")
                        else:
                            fast_packets += 1
                            fast_bytes += n
                        continue
                data = bytes(view[:n])
                self._one(session, source, data, now)
                if session.kernel is not None or (binding.client, binding.node) != (client, node):
                    hot = False  # the flow moved: the rest of the batch takes the full path
        finally:
            stats.user_packets += fast_packets
            stats.user_bytes += fast_bytes

    def _one(self, session: _Session, source: Addr, data: bytes, now: float) -> None:
        """One datagram through the session's Binding (every case but bound-leg data)."""
        sock, binding, stats = session.sock, session.binding, self.stats
        if session.kernel is not None and source in session.kernel:
            # The tail of what was queued before the flow went into the kernel: sending it
            # from our socket would make a conntrack entry that clashes with the kernel's.
            stats.drop("in_kernel")
            return
        verdict = binding.receive(source, data, now)
        if verdict.event is Event.CANDIDATE:
            self._withdraw(session)
            session.withdrawn_until = now + WITHDRAW_S
        bound = verdict.event in (Event.BIND, Event.REBIND)
        if bound:
            # Published before the datagram that made the bind goes on: whoever sees it
            # arrive (the far leg, a test, the status file) sees the legs that carried it.
            self._legs[session.spec.port] = (binding.client, binding.node)
        if verdict.to is not None:
            try:
                sock.sendto(data, verdict.to)
            except OSError as exc:
                log.debug("relay port %d: send to %s: %s", session.spec.port, verdict.to, exc)
                stats.drop("send_failed")
            else:
                stats.user_packets += 1
                stats.user_bytes += len(data)
        elif verdict.drop is not None:
            stats.drop(verdict.drop.value)
        if bound and verdict.event is not None:
            if verdict.event is Event.BIND:
                stats.binds += 1
            else:
                stats.rebinds += 1
            log.info(
                "relay port %d: %s client %s node %s",
                session.spec.port,
                verdict.event.value,
                binding.client,
                binding.node,
            )
            # After the send: removing a kernel flow runs nft and conntrack (tenths of a s).
            self._withdraw(session)
            session.withdrawn_until = now + CONFIRM_S  # _tick offloads (CONFIRM_S)

    def _offload(self, session: _Session) -> None:
        b = session.binding
        if self.kernel is None or session.kernel is not None:
            return
        if b.client is None or b.node is None:
            return
        if self._local(b.client[0]) or self._local(b.node[0]):
            # A leg on this host (the WebSocket relay's bridge beside an embedded relay):
            # its packets pass the OUTPUT/INPUT hooks, never the PREROUTING DNAT, so the
            # kernel path cannot carry them; this thread does.
            return
        try:
            self.kernel.add(session.spec.port, b.client, b.node)
        except Exception as exc:  # the userspace path keeps carrying the session
            log.warning("relay port %d: kernel forwarding failed: %s", session.spec.port, exc)
            self.stats.drop("kernel_error")
            session.withdrawn_until = self._clock() + 30.0  # retried, not every tick
            return
        session.kernel = (b.client, b.node)

    def _local(self, ip: str) -> bool:
        return ip == self.relay_ip or ip.startswith("127.") or ip == "::1"

    def _withdraw(self, session: _Session) -> None:
        if self.kernel is None or session.kernel is None:
            return
        client, node = session.kernel
        session.kernel = None
        try:
            self.kernel.delete(session.spec.port, client, node)
        except Exception as exc:
            log.warning("relay port %d: removing the kernel flow: %s", session.spec.port, exc)

    def _tick(self, now: float) -> None:
        kernel = userspace = 0
        for session in self._sessions.values():
            if not session.binding.bound:
                continue
            if (
                self.kernel is not None
                and session.kernel is None
                and now >= session.withdrawn_until
            ):
                self._offload(session)
            if session.kernel is not None:
                kernel += 1
            else:
                userspace += 1
        self.stats.flows_kernel, self.stats.flows_userspace = kernel, userspace
