"""The UDP relay's kernel path: one nftables table of ours that DNATs/SNATs bound flows.

The table (``ip higgsrelay`` or ``ip higgsrelay_<instance>``; IPv4 only for now)::

    map to_peer  (saddr . sport . relay port) : (peer addr . peer port)     both directions
    map to_relay (saddr . sport . daddr . dport after DNAT) : (relay ip . relay port)
    chain pre   nat prerouting:  ip daddr RELAY udp dport FIRST-LAST dnat to the to_peer map
    chain post  nat postrouting: ct status dnat, original daddr RELAY: snat to the to_relay map
    chain count filter forward:  ct status dnat, original daddr RELAY: ct mark, counter "forwarded"

A datagram whose key is not in ``to_peer`` is not NATed and reaches the relay's own socket. NAT
applies only when a conntrack entry is created, so every change of a flow is followed by
deleting the relay port's entries (:meth:`RelayNat.flush_port`). Forwarded flows carry the
connmark :attr:`RelayNatNames.mark`, so a later process can delete them without state.

Journaled once (op ``relay_nat_remove``): the undo deletes the table and every conntrack entry
with our mark or toward a relay port of ours.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from typing import Any

from higgs.osnet import conntrack, undo
from higgs.osnet.changes import ChangeLog
from higgs.osnet.errors import CommandError, OsnetError
from higgs.osnet.runner import Runner

__all__ = [
    "FLUSH",
    "FLUSH_OP",
    "UNDO",
    "UNDO_OP",
    "Flow",
    "RelayNat",
    "RelayNatNames",
    "flush_port",
    "journal_flush",
    "render_flow",
    "render_table",
    "sweep",
]

UNDO_OP = "relay_nat_remove"
_INSTANCE_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,11}$")
Addr = tuple[str, int]


@dataclass(frozen=True)
class RelayNatNames:
    table: str
    mark: int

    @classmethod
    def for_instance(cls, instance: str = "") -> RelayNatNames:
        if instance and not _INSTANCE_RE.match(instance):
            raise OsnetError(
                f"invalid relay instance name {instance!r}: 1-12 of a-z, 0-9, '_' (starting alnum)"
            )
        suffix = f"_{instance}" if instance else ""
        return cls(
            f"higgsrelay{suffix}", 0x68670000 | (zlib.crc32(f"relay:{instance}".encode()) & 0xFFFF)
        )


@dataclass(frozen=True)
class Flow:
    """One bound session: ``port`` on the relay address between ``client`` and ``node``."""

    port: int
    client: Addr
    node: Addr


def render_table(names: RelayNatNames, relay_ip: str, first: int, last: int) -> str:
    """The whole table, empty maps (applied with ``nft -f``; recreates it if present)."""
    t = names.table
    return (
        f"table ip {t}\ndelete table ip {t}\n"
        f"table ip {t} {{\n"
        "  map to_peer { type ipv4_addr . inet_service . inet_service"
        " : ipv4_addr . inet_service; }\n"
        "  map to_relay { type ipv4_addr . inet_service . ipv4_addr . inet_service"
        " : ipv4_addr . inet_service; }\n"
        "  counter forwarded { }\n"
        "  chain pre {\n    type nat hook prerouting priority dstnat; policy accept;\n"
        f"    ip daddr {relay_ip} udp dport {first}-{last}"
        " dnat ip to ip saddr . udp sport . udp dport map @to_peer\n  }\n"
        "  chain post {\n    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    ct status dnat ct original ip daddr {relay_ip}"
        " snat ip to ip saddr . udp sport . ip daddr . udp dport map @to_relay\n  }\n"
        "  chain count {\n    type filter hook forward priority filter; policy accept;\n"
        f"    ct status dnat ct original ip daddr {relay_ip}"
        f" ct mark set 0x{names.mark:08x} counter name forwarded\n  }}\n"
        "}\n"
    )


def _elements(relay_ip: str, flow: Flow) -> tuple[str, str]:
    (c_ip, c_port), (n_ip, n_port), p = flow.client, flow.node, flow.port
    flows = (
        f"{c_ip} . {c_port} . {p} : {n_ip} . {n_port}, {n_ip} . {n_port} . {p} : {c_ip} . {c_port}"
    )
    snat = (
        f"{c_ip} . {c_port} . {n_ip} . {n_port} : {relay_ip} . {p}, "
        f"{n_ip} . {n_port} . {c_ip} . {c_port} : {relay_ip} . {p}"
    )
    return flows, snat


def render_flow(names: RelayNatNames, relay_ip: str, flow: Flow, *, add: bool) -> str:
    flows, snat = _elements(relay_ip, flow)
    verb = "add" if add else "delete"
    return (
        f"{verb} element ip {names.table} to_peer {{ {flows} }}\n"
        f"{verb} element ip {names.table} to_relay {{ {snat} }}\n"
    )


def _nft(runner: Runner, script: str) -> None:
    try:
        runner.run(["nft", "-f", "-"], input=script)
    except CommandError as exc:
        raise OsnetError(f"nftables refused the relay's rules: {exc}") from exc


def flush_port(runner: Runner, relay_ip: str, port: int) -> int:
    """Deletes every conntrack entry toward or from ``relay_ip:port`` (UDP)."""
    n = conntrack.delete(
        runner, ["-p", "udp", "--orig-dst", relay_ip, "--orig-port-dst", str(port)]
    )
    n += conntrack.delete(
        runner, ["-p", "udp", "--orig-src", relay_ip, "--orig-port-src", str(port)]
    )
    return n


def _flush_all(runner: Runner, relay_ip: str, first: int, last: int, mark: int) -> None:
    if mark:
        conntrack.delete(runner, ["--mark", str(mark)])
    listing = runner.run(
        ["conntrack", "-L", "-p", "udp", "--orig-dst", relay_ip], check=False, timeout=10
    )
    ports = {
        int(m.group(1))
        for m in re.finditer(rf"dst={re.escape(relay_ip)} sport=\d+ dport=(\d+)", listing.stdout)
    }
    for port in sorted(p for p in ports if first <= p <= last):
        flush_port(runner, relay_ip, port)


def _remove_table(runner: Runner, table: str) -> None:
    _nft(runner, f"table ip {table}\ndelete table ip {table}\n")


class RelayNat:
    """The relay host's table; :meth:`install` journals it, flows come and go without entries
    of their own (they live and die with the table)."""

    def __init__(
        self,
        names: RelayNatNames,
        relay_ip: str,
        ports: tuple[int, int],
        *,
        journal: ChangeLog,
        runner: Runner,
    ) -> None:
        self.names, self.relay_ip, self.ports = names, relay_ip, ports
        self.journal, self.runner = journal, runner

    @staticmethod
    def is_supported(runner: Runner) -> bool:
        probe = "table ip higgs_probe {}\ndelete table ip higgs_probe\n"
        try:
            runner.run(["nft", "-c", "-f", "-"], input=probe, timeout=10)
            runner.run(["conntrack", "--version"], timeout=10)
        except (CommandError, OSError):
            return False
        return True

    def undo_spec(self) -> dict[str, Any]:
        return UNDO.record(
            RelayNatUndo(
                table=self.names.table,
                mark=self.names.mark,
                relay_ip=self.relay_ip,
                first=self.ports[0],
                last=self.ports[1],
            )
        )

    def install(self) -> None:
        script = render_table(self.names, self.relay_ip, *self.ports)
        self.journal.step(
            f"nft table ip {self.names.table} (UDP relay {self.relay_ip})",
            self.undo_spec(),
            lambda: _nft(self.runner, script),
        )

    def add(self, flow: Flow) -> None:
        _nft(self.runner, render_flow(self.names, self.relay_ip, flow, add=True))
        flush_port(self.runner, self.relay_ip, flow.port)

    def delete(self, flow: Flow) -> None:
        try:
            _nft(self.runner, render_flow(self.names, self.relay_ip, flow, add=False))
        finally:
            flush_port(self.runner, self.relay_ip, flow.port)

    def counters(self) -> tuple[int, int]:
        """(packets, bytes) the kernel forwarded since the table was installed."""
        result = self.runner.run(
            ["nft", "-j", "list", "counter", "ip", self.names.table, "forwarded"], check=False
        )
        if not result.ok:
            return (0, 0)
        for item in json.loads(result.stdout).get("nftables", []):
            counter = item.get("counter")
            if counter:
                return (int(counter.get("packets", 0)), int(counter.get("bytes", 0)))
        return (0, 0)

    def listing(self) -> str:
        result = self.runner.run(["nft", "list", "table", "ip", self.names.table], check=False)
        return result.stdout if result.ok else ""


@dataclass(frozen=True)
class RelayNatUndo:
    table: str
    mark: int
    relay_ip: str
    first: int  # the relay's port range
    last: int


@dataclass(frozen=True)
class RelayFlushUndo:
    relay_ip: str
    first: int
    last: int


def _op_remove(params: RelayNatUndo, ctx: undo.UndoContext) -> None:
    _remove_table(ctx.runner, params.table)
    _flush_all(ctx.runner, params.relay_ip, params.first, params.last, params.mark)


def sweep(names: RelayNatNames, runner: Runner) -> list[str]:
    """Deletes our table without reading state (conntrack entries with our mark too)."""
    present = runner.run(["nft", "list", "table", "ip", names.table], check=False).ok
    if not present:
        return []
    _remove_table(runner, names.table)
    conntrack.delete(runner, ["--mark", str(names.mark)])
    return [f"nft table ip {names.table}"]


UNDO = undo.UndoOp(UNDO_OP, RelayNatUndo, _op_remove)


FLUSH_OP = "relay_conntrack_flush"


def journal_flush(journal: ChangeLog, relay_ip: str, first: int, last: int) -> None:
    """Userspace mode: no table, but the relay's sockets leave conntrack entries behind."""
    journal.record(
        f"conntrack entries of the UDP relay {relay_ip}:{first}-{last}",
        FLUSH.record(RelayFlushUndo(relay_ip, first, last)),
    )


def _op_flush(params: RelayFlushUndo, ctx: undo.UndoContext) -> None:
    try:
        ctx.runner.run(["conntrack", "--version"], timeout=10)
    except (CommandError, OSError):
        return  # no conntrack tool: nothing we could list either
    _flush_all(ctx.runner, params.relay_ip, params.first, params.last, 0)


FLUSH = undo.UndoOp(FLUSH_OP, RelayFlushUndo, _op_flush)
