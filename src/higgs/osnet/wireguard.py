"""One WireGuard interface: kernel module when present, else wireguard-go; configured alike.

Creation is journaled before it happens (the link's deletion, or for wireguard-go the stop of
the daemon by PID plus removal of its socket); everything else lives on the link and goes with
it, so :meth:`WireGuard.destroy` — or a replayed journal — takes it all away.

Configuration goes through ``wg`` (the same tool for both backends). Private and preshared
keys are handed to ``wg`` on stdin (``/dev/stdin``), never in argv and never logged. Addresses,
MTU and link state go through netlink (pyroute2).

wireguard-go's control socket is ``/var/run/wireguard/NAME.sock``; that directory is shared by
every network namespace of the host, so names must be unique host-wide. The socket appears
only after the TUN device exists, but it is bound before it listens: in between a connect is
refused, and ``wg`` then *deletes* the socket as a dead daemon's and falls back to the kernel
(``Protocol not supported``), leaving wireguard-go unreachable for good. So we wait until the
socket accepts a connection (and for the daemon to still be alive) before configuring.

Reading the interface (:meth:`WireGuard.dump`, the client's per-second peer statistics) asks
wireguard-go's socket directly (the cross-platform UAPI's ``get=1``, what ``wg show`` sends
it) instead of starting a ``wg`` process twice a second; the kernel module, or a socket that
does not answer, is read with ``wg show dump``.
"""

from __future__ import annotations

import base64
import errno
import ipaddress
import logging
import shutil
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from higgs.common.keys import PrivateKey, validate_public_key
from higgs.osnet import netlink, procs, undo
from higgs.osnet.changes import ChangeLog, Entry
from higgs.osnet.errors import CommandError, OsnetError, UndoError
from higgs.osnet.handshakes import HandshakeClock
from higgs.osnet.names import WG_SOCKET_DIR, validate_ifname
from higgs.osnet.runner import Runner

__all__ = [
    "UNDO_WIREGUARD_GO",
    "Backend",
    "Dump",
    "Peer",
    "PeerStats",
    "WireGuard",
    "WireGuardError",
    "accepts_connections",
    "is_supported",
    "kernel_module_loaded",
    "parse_dump",
    "parse_uapi",
    "uapi_get",
    "wireguard_go_undo",
]

Backend = Literal["auto", "kernel", "userspace"]

log = logging.getLogger(__name__)

SOCKET_WAIT = 10.0
# A read of wireguard-go's socket: it answers in well under a millisecond.
UAPI_TIMEOUT = 2.0
USERSPACE_ATTEMPTS = 3
_NO_KERNEL_WG = ("Unknown device type", "Not supported", "not supported", "No such device")


def accepts_connections(path: Path) -> bool:
    """True once a process listens on the UNIX socket ``path`` (it may exist, bound, before:
    a connect is then refused). Our probe connection is closed at once; wireguard-go reads a
    command per connection and takes an empty one as a hang-up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError, TimeoutError):
            return False
    return True


class WireGuardError(OsnetError):
    """A WireGuard interface cannot be created or configured."""


class _EarlyExit(Exception):
    """wireguard-go died before its control socket appeared."""


def _tail(path: Path, limit: int = 400) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "no output"
    return text[-limit:] or "no output"


def kernel_module_loaded() -> bool:
    return Path("/sys/module/wireguard").exists()


def is_supported() -> bool:
    """``wg`` is installed and either the kernel module or wireguard-go is available."""
    return shutil.which("wg") is not None and (
        kernel_module_loaded() or shutil.which("wireguard-go") is not None
    )


@dataclass(frozen=True)
class Peer:
    """A peer as we want it. Setting it again updates it (allowed IPs are replaced)."""

    public_key: str
    allowed_ips: tuple[str, ...] = ()
    endpoint: str | None = None  # "host:port" or "[v6]:port"
    persistent_keepalive: int = 0  # seconds; 0 = off
    preshared_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class PeerStats:
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    # unix time; None before the first handshake. From WireGuard.dump: re-based on our wall
    # clock of the read, so ``time.time() - latest_handshake`` survives clock steps
    # (osnet.handshakes).
    latest_handshake: float | None
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int  # 0 = off


@dataclass(frozen=True)
class Dump:
    public_key: str | None
    listen_port: int
    fwmark: int  # 0 = off
    peers: tuple[PeerStats, ...]

    def peer(self, public_key: str) -> PeerStats | None:
        return next((p for p in self.peers if p.public_key == public_key), None)


def parse_dump(text: str) -> Dump:
    """Parses ``wg show NAME dump``; the interface line's private key is dropped unread."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise WireGuardError("`wg show dump` printed nothing")
    head = lines[0].split("\t")
    if len(head) != 4:
        raise WireGuardError("unexpected `wg show dump` interface line")
    public = None if head[1] == "(none)" else head[1]
    fwmark = 0 if head[3] == "off" else int(head[3], 0)
    peers = []
    for line in lines[1:]:
        f = line.split("\t")
        if len(f) != 8:
            raise WireGuardError("unexpected `wg show dump` peer line")
        peers.append(
            PeerStats(
                public_key=f[0],
                endpoint=None if f[2] == "(none)" else f[2],
                allowed_ips=() if f[3] == "(none)" else tuple(f[3].split(",")),
                latest_handshake=int(f[4]) or None,
                rx_bytes=int(f[5]),
                tx_bytes=int(f[6]),
                persistent_keepalive=0 if f[7] == "off" else int(f[7]),
            )
        )
    return Dump(public, int(head[2]), fwmark, tuple(peers))


def parse_uapi(text: str) -> Dump:
    """Parses wireguard-go's answer to ``get=1`` (keys in hex, one ``key=value`` a line; a
    ``public_key`` starts each peer; ``errno=0`` last) into the :class:`Dump` that
    :func:`parse_dump` gives for the same interface. The private key is read only to derive
    the public one."""
    head: dict[str, str] = {}
    peers: list[dict[str, list[str]]] = []
    status = None
    for line in text.splitlines():
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise WireGuardError("unexpected line in wireguard-go's answer")
        if key == "errno":
            status = value
        elif key == "public_key":
            peers.append({key: [value]})
        elif peers:
            peers[-1].setdefault(key, []).append(value)
        else:
            head[key] = value
    if status != "0":
        raise WireGuardError(f"wireguard-go answered errno={status}")

    def b64(hexkey: str) -> str:
        return base64.b64encode(bytes.fromhex(hexkey)).decode()

    def one(peer: dict[str, list[str]], key: str, default: str = "0") -> str:
        return peer.get(key, [default])[0]

    try:
        private = head.get("private_key")
        public = PrivateKey(bytes.fromhex(private)).public_b64() if private else None
        stats = tuple(
            PeerStats(
                public_key=b64(one(p, "public_key")),
                endpoint=p["endpoint"][0] if "endpoint" in p else None,
                allowed_ips=tuple(p.get("allowed_ip", ())),
                latest_handshake=int(one(p, "last_handshake_time_sec")) or None,
                rx_bytes=int(one(p, "rx_bytes")),
                tx_bytes=int(one(p, "tx_bytes")),
                persistent_keepalive=int(one(p, "persistent_keepalive_interval")),
            )
            for p in peers
        )
        return Dump(public, int(head.get("listen_port", "0")), int(head.get("fwmark", "0")), stats)
    except ValueError as exc:
        raise WireGuardError(f"unexpected value in wireguard-go's answer: {exc}") from None


def uapi_get(path: Path, timeout: float = UAPI_TIMEOUT) -> str:
    """wireguard-go's answer to ``get=1`` on its control socket ``path``; raises OSError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(b"get=1\n\n")
        chunks: list[bytes] = []
        # The answer ends with an empty line after "errno=N"; wireguard-go keeps the
        # connection open for the next request.
        while not b"".join(chunks[-2:]).endswith(b"\n\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode()


def _check_endpoint(endpoint: str) -> str:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise WireGuardError(f"invalid endpoint {endpoint!r}: expected host:port")
    if host.startswith("["):
        if not host.endswith("]"):
            raise WireGuardError(f"invalid endpoint {endpoint!r}")
        ipaddress.IPv6Address(host[1:-1])
    return endpoint


def wireguard_go_undo(
    name: str,
    socket: Path,
    netns: str | None = None,
    pid: int | None = None,
    start_time: int | None = None,
) -> undo.Undo:
    return UNDO_WIREGUARD_GO.record(WireguardGoUndo(name, str(socket), netns, pid, start_time))


@dataclass(frozen=True)
class WireguardGoUndo:
    name: str
    socket: str
    netns: str | None = None
    pid: int | None = None  # None: journaled before it was spawned
    start_time: int | None = None


def _undo_wireguard_go(params: WireguardGoUndo, ctx: undo.UndoContext) -> None:
    """Stops the wireguard-go serving ``name``: by its recorded PID, or — when the process
    died before the PID was journaled — by the owner of its control socket."""
    sock = Path(params.socket)
    if params.pid is not None and params.start_time is not None:
        procs.stop_process(params.pid, params.start_time)
    for owner, owner_start in procs.socket_owners(sock):
        procs.stop_process(owner, owner_start)
    # wireguard-go removes its TUN device on exit; a kernel-held leftover is deleted here.
    undo.INTERFACE_DELETE.run(undo.InterfaceDelete(params.name, params.netns), ctx)
    sock.unlink(missing_ok=True)


UNDO_WIREGUARD_GO = undo.UndoOp("wireguard_go", WireguardGoUndo, _undo_wireguard_go)


class WireGuard:
    """One WireGuard interface ``name`` (optionally in network namespace ``netns``)."""

    def __init__(
        self,
        name: str,
        *,
        journal: ChangeLog,
        runner: Runner | None = None,
        netns: str | None = None,
        backend: Backend = "auto",
    ) -> None:
        self.name = validate_ifname(name)
        self.journal = journal
        self.runner: Runner = runner if runner is not None else journal.runner
        self.netns = netns
        self.backend = backend
        self.backend_used: Literal["kernel", "userspace"] | None = None
        self._entry: Entry | None = None
        self._handshakes = HandshakeClock()

    @property
    def socket(self) -> Path:
        return WG_SOCKET_DIR / f"{self.name}.sock"

    def _ns(self, argv: Sequence[str]) -> list[str]:
        return list(argv) if self.netns is None else ["ip", "netns", "exec", self.netns, *argv]

    def _wg(self, *args: str, input: str | None = None) -> str:
        return self.runner.run(self._ns(["wg", *args]), input=input).stdout

    # --- lifecycle ------------------------------------------------------------------------

    def exists(self) -> bool:
        return bool(netlink.call(lambda ipr: ipr.link_lookup(ifname=self.name), self.netns))

    def create(self) -> None:
        """Creates the interface (journaled first). Refuses a name that is already in use:
        it is not ours to take over (``cleanup`` removes a leftover of our own)."""
        if self.exists():
            raise WireGuardError(
                f"interface {self.name} already exists; if it is a leftover of ours run "
                "`cleanup`, else choose another --interface"
            )
        if self.backend in ("auto", "kernel"):
            try:
                self._create_kernel()
                return
            except CommandError as exc:
                if self.backend == "kernel" or not any(m in exc.stderr for m in _NO_KERNEL_WG):
                    raise WireGuardError(f"cannot create {self.name}: {exc}") from exc
        self._create_userspace()

    def _create_kernel(self) -> None:
        ip = ["ip"] if self.netns is None else ["ip", "-n", self.netns]
        self._entry = self.journal.record(
            f"wireguard interface {self.name} (kernel)",
            undo.interface_delete(self.name, self.netns),
        )
        try:
            self.runner.run([*ip, "link", "add", "dev", self.name, "type", "wireguard"])
        except BaseException:
            self.journal.forget(self._entry)  # nothing was made: the add failed
            self._entry = None
            raise
        self.backend_used = "kernel"

    def _create_userspace(self) -> None:
        if self.socket.exists() and procs.socket_owners(self.socket):
            raise WireGuardError(
                f"{self.socket} is in use by a running wireguard-go; choose another name"
            )
        # The socket directory is shared by the whole host; another program's cleanup may
        # remove it between wireguard-go's own mkdir and its listen (seen under concurrent
        # test runs), and the daemon then exits at once: start it again, a few times.
        for attempt in range(1, USERSPACE_ATTEMPTS + 1):
            try:
                self._spawn_userspace()
                self.backend_used = "userspace"
                return
            except _EarlyExit as exc:
                if attempt == USERSPACE_ATTEMPTS:
                    raise WireGuardError(str(exc)) from None
                log.warning("%s; starting it again (attempt %d)", exc, attempt + 1)

    def _spawn_userspace(self) -> None:
        WG_SOCKET_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        entry = self.journal.record(
            f"wireguard-go {self.name}", wireguard_go_undo(self.name, self.socket, self.netns)
        )
        self._entry = entry
        log_path = self.journal.path.parent / f"wireguard-go-{self.name}.log"
        try:
            pid = self.runner.spawn(
                self._ns(["wireguard-go", "-f", self.name]),
                # Harmless without the module; lets a forced userspace run where it exists.
                env={"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "LOG_LEVEL": "error"},
                log_path=log_path,
            )
            start = procs.process_start_time(pid)
            self._entry = self.journal.amend(
                entry, wireguard_go_undo(self.name, self.socket, self.netns, pid, start)
            )
            self._wait_for_socket(pid, start, log_path)
        except BaseException as exc:
            try:
                self.journal.undo(entry)
            except UndoError as undo_exc:
                exc.add_note(str(undo_exc))
            self._entry = None
            raise

    def _wait_for_socket(self, pid: int, start: int | None, log_path: Path) -> None:
        deadline = time.monotonic() + SOCKET_WAIT
        while not accepts_connections(self.socket):
            if start is None or not procs.is_running(pid, start):
                raise _EarlyExit(f"wireguard-go {self.name} exited at start: {_tail(log_path)}")
            if time.monotonic() > deadline:
                raise WireGuardError(
                    f"wireguard-go {self.name}: no control socket after {SOCKET_WAIT:g}s"
                )
            time.sleep(0.02)

    def destroy(self) -> None:
        """Deletes the interface (and stops wireguard-go). Missing is fine."""
        if self._entry is not None:
            self.journal.undo(self._entry)
            self._entry = None
            return
        # Not created by this object (e.g. adopted after a restart): undo from the names.
        UNDO_WIREGUARD_GO.apply(
            wireguard_go_undo(self.name, self.socket, self.netns), undo.UndoContext(self.runner)
        )

    # --- wg configuration -----------------------------------------------------------------

    def configure(
        self,
        private_key: PrivateKey,
        *,
        listen_port: int | None = None,
        fwmark: int | None = None,
    ) -> None:
        args = ["set", self.name, "private-key", "/dev/stdin"]
        if listen_port is not None:
            args += ["listen-port", str(listen_port)]
        if fwmark is not None:
            args += ["fwmark", hex(fwmark) if fwmark else "off"]
        self._wg(*args, input=private_key.b64() + "\n")

    def set_peer(self, peer: Peer) -> None:
        """Adds the peer or updates it in place (idempotent)."""
        try:
            key = validate_public_key(peer.public_key)
        except ValueError as exc:
            raise WireGuardError(f"invalid peer public key: {exc}") from exc
        nets = [str(ipaddress.ip_network(a, strict=False)) for a in peer.allowed_ips]
        args = ["set", self.name, "peer", key, "allowed-ips", ",".join(nets)]
        if peer.endpoint is not None:
            args += ["endpoint", _check_endpoint(peer.endpoint)]
        args += ["persistent-keepalive", str(peer.persistent_keepalive or "off")]
        stdin = None
        if peer.preshared_key is not None:
            args += ["preshared-key", "/dev/stdin"]
            stdin = peer.preshared_key + "\n"
        self._wg(*args, input=stdin)

    def remove_peer(self, public_key: str) -> None:
        """Removes the peer; a peer that is not there is fine."""
        try:
            key = validate_public_key(public_key)
        except ValueError as exc:
            raise WireGuardError(f"invalid peer public key: {exc}") from exc
        self._wg("set", self.name, "peer", key, "remove")

    def peers(self) -> tuple[PeerStats, ...]:
        return self.dump().peers

    def dump(self) -> Dump:
        """The interface as ``wg show dump`` reports it, handshake times re-based on our clock
        (a wall clock that stepped since a handshake does not age it: osnet.handshakes)."""
        raw = self._read()
        times = self._handshakes.rebase(
            (p.public_key, None if p.latest_handshake is None else int(p.latest_handshake))
            for p in raw.peers
        )
        peers = tuple(replace(p, latest_handshake=times[p.public_key]) for p in raw.peers)
        return replace(raw, peers=peers)

    def _read(self) -> Dump:
        """The interface from wireguard-go's socket (no process started), else ``wg``."""
        if self.backend_used != "kernel" and self.socket.exists():
            try:
                return parse_uapi(uapi_get(self.socket))
            except (OSError, WireGuardError) as exc:
                log.debug("reading %s from its socket failed (%s); asking wg", self.name, exc)
        return parse_dump(self._wg("show", self.name, "dump"))

    # --- netlink: addresses, MTU, up ------------------------------------------------------

    def _index(self, ipr: Any) -> int:
        found = ipr.link_lookup(ifname=self.name)
        if not found:
            raise WireGuardError(f"interface {self.name} does not exist")
        return int(found[0])

    def set_addresses(self, addresses: Iterable[str]) -> None:
        """Adds ``addresses`` (CIDR, v4 or v6) to the interface; present ones are kept."""
        ifaces = [ipaddress.ip_interface(a) for a in addresses]

        def apply(ipr: Any) -> None:
            index = self._index(ipr)
            for iface in ifaces:
                try:
                    ipr.addr(
                        "add",
                        index=index,
                        address=str(iface.ip),
                        prefixlen=iface.network.prefixlen,
                    )
                except netlink.NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise WireGuardError(f"cannot add {iface} to {self.name}: {exc}") from exc

        netlink.call(apply, self.netns)

    def up(self, mtu: int | None = None) -> None:
        def apply(ipr: Any) -> None:
            index = self._index(ipr)
            if mtu is not None:
                ipr.link("set", index=index, mtu=mtu)
            ipr.link("set", index=index, state="up")

        netlink.call(apply, self.netns)
