"""A read-only tap for the server's reachability probes (``higgs.protocol.reachability``).

wireguard-go owns the WireGuard UDP port, so the agent cannot bind it. A raw IPv4 socket for
UDP gets a copy of every UDP datagram delivered to the host; a classic BPF filter attached to
it passes only datagrams to the WireGuard port whose payload is a probe, so WireGuard traffic
never wakes Python. Nothing on the host changes (no rule to undo): the filter dies with the
socket. Needs CAP_NET_RAW (root has it).

The same socket also *sends* probes from the WireGuard port (hole punching, issue 12): a raw
UDP socket writes the UDP header itself, so the datagram leaves with wireguard-go's source
port and takes the same NAT mapping as WireGuard's own packets, without touching its socket.
With ``fwmark`` the probes carry WireGuard's mark, so a client's full tunnel and kill switch
let them out beside the tunnel like WireGuard's own packets.
"""

from __future__ import annotations

import ctypes
import socket
import struct

from higgs.osnet.errors import OsnetError
from higgs.protocol.reachability import MAGIC, PROBE_LEN, ProbeError, decode_probe

__all__ = ["ProbeTap", "probe_filter"]

SO_ATTACH_FILTER = 26
SO_MARK = 36
_UDP_HEADER = 8

# Classic BPF opcodes used below.
_LDXB_MSH = 0xB1  # X = 4 * (pkt[k] & 0x0f): the IPv4 header length
_LDH_IND = 0x48  # A = u16 at X + k
_LDW_IND = 0x40  # A = u32 at X + k
_JEQ_K = 0x15
_RET_K = 0x06


def probe_filter(port: int) -> list[tuple[int, int, int, int]]:
    """The filter program as (code, jt, jf, k): UDP dport == ``port``, UDP length == a probe's,
    payload starts with the magic. Offsets are from the IP header (raw sockets see it)."""
    magic_hi, magic_lo = struct.unpack("!II", MAGIC)
    return [
        (_LDXB_MSH, 0, 0, 0),
        (_LDH_IND, 0, 0, 2),  # destination port
        (_JEQ_K, 0, 7, port),
        (_LDH_IND, 0, 0, 4),  # UDP length
        (_JEQ_K, 0, 5, _UDP_HEADER + PROBE_LEN),
        (_LDW_IND, 0, 0, _UDP_HEADER),
        (_JEQ_K, 0, 3, magic_hi),
        (_LDW_IND, 0, 0, _UDP_HEADER + 4),
        (_JEQ_K, 0, 1, magic_lo),
        (_RET_K, 0, 0, 0xFFFF),
        (_RET_K, 0, 0, 0),
    ]


class ProbeTap:
    """Non-blocking; use :meth:`fileno` with ``loop.add_reader`` and call :meth:`read`."""

    def __init__(self, port: int, *, fwmark: int | None = None) -> None:
        self.port = port
        self.sent = 0
        self.dropped = 0  # datagrams that passed the filter but were not probes for us
        try:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        except OSError as exc:
            raise OsnetError(f"cannot open the probe tap (needs CAP_NET_RAW): {exc}") from exc
        try:
            program = probe_filter(port)
            buf = ctypes.create_string_buffer(
                b"".join(struct.pack("HBBI", *insn) for insn in program)
            )
            fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
            self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            if fwmark:
                self._sock.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)
            self._sock.setblocking(False)
            self.read()  # what arrived before the filter was attached
        except BaseException:
            self._sock.close()
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> list[bytes]:
        """The nonces of the probes waiting now."""
        nonces: list[bytes] = []
        while True:
            try:
                packet = self._sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return nonces
            nonce = self._parse(packet)
            if nonce is None:
                self.dropped += 1
            else:
                nonces.append(nonce)

    def _parse(self, packet: bytes) -> bytes | None:
        if len(packet) < 20:
            return None
        ihl = (packet[0] & 0x0F) * 4
        udp = packet[ihl : ihl + _UDP_HEADER]
        if len(udp) < _UDP_HEADER or struct.unpack("!H", udp[2:4])[0] != self.port:
            return None
        try:
            return decode_probe(packet[ihl + _UDP_HEADER :])
        except ProbeError:
            return None

    def send(self, payload: bytes, host: str, port: int) -> bool:
        """Sends ``payload`` from the WireGuard port to ``host:port``; False if it failed.
        The UDP checksum is left 0 (none, allowed for IPv4; NATs keep it 0)."""
        header = struct.pack("!HHHH", self.port, port, _UDP_HEADER + len(payload), 0)
        try:
            self._sock.sendto(header + payload, (host, 0))
        except OSError:
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        self._sock.close()
