"""``python -m bench.udprelay [--smoke] [--rounds N]``: the UDP relay's own figures (issue 11,
"Performance"), measured in namespaces with the product's code (bench/udprelay/netlab.py):

(a) **Kernel-forwarded CPU per datagram.** A pinned sender floods 1420-byte WireGuard data
    datagrams; its CPU time (tick accounting: the softirq work done in its context is its
    system time, and on veth the whole receive path of the relay and the node runs there)
    divided by datagrams sent. Three rows per round: *sink* (dropped on the relay's ingress:
    the sender and one veth), *routed* (the relay host routes them, no relay: the reference)
    and *relay* (DNAT/SNAT through the product's nft table with one bound flow, as
    ``RelayNat.add`` installs it). The relay host's own cost is the row minus *sink* in the
    same round.
(b) **Userspace forwarder packets/s on one core.** The product's ``Forwarder`` (kernel path
    off) pinned to CPU 1, bound by a real handshake (initiation and response with valid mac1),
    flooded from CPU 0; reference: the shortest CPython receive-and-send loop, same pinning.
    Rates are per second of the forwarder thread's own CPU time (the machine is shared: wall
    clock rates would measure the neighbours) and per wall second.
(c) **Leasing many ports on one address.** The forwarder opens N leased ports (time, memory);
    a handshake on the first, middle and last port still crosses the relay; the nft maps
    hold N bound flows (load time, element count); the product's per-bind cost
    (``RelayNat.add``: one nft and two conntrack commands).
"""

from __future__ import annotations

import json
import resource
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.harness import (
    Case,
    Results,
    Section,
    Table,
    fmt,
    part_main,
    progress,
    run_rounds,
    unavailable_notes,
)
from higgs.osnet.journal import Journal
from higgs.osnet.relaynat import Flow, RelayNat, RelayNatNames, render_flow
from higgs.osnet.runner import SubprocessRunner

from .netlab import CLIENT, NODE, RELAY_IP, NetLab, sh

__all__ = ["main", "run"]

TITLE = 'UDP relay (bench/udprelay, issue 11 "Performance")'
TARGET_KERNEL_US = 2.0  # relay CPU per forwarded datagram once offloaded
TARGET_USER_PPS = 120_000  # userspace fallback, one core, 1420 B
TARGET_LEASES = 20_000
SIZE = 1420
KPORT, UPORT, BPORT = 40000, 40001, 40002


@dataclass(frozen=True)
class Sizes:
    datagrams: int
    seconds: float
    leases: int


SMOKE = Sizes(datagrams=30_000, seconds=0.3, leases=300)
FULL = Sizes(datagrams=1_500_000, seconds=8.0, leases=TARGET_LEASES)


def _flood(lab: NetLab, sport: int, dst: str, dport: int, sizes: Sizes) -> dict[str, float]:
    return lab.run_agent(
        lab.client, "flood", CLIENT, dst, "--sport", str(sport), "--dport", str(dport),
        "--count", str(sizes.datagrams), "--seconds", str(sizes.seconds), "--size", str(SIZE),
        "--cpu", "0",
    )  # fmt: skip


def _nat(lab: NetLab, tmp: Path, ports: tuple[int, int]) -> tuple[RelayNat, Journal]:
    runner = SubprocessRunner(netns=lab.relay)
    journal = Journal(tmp / "journal.json", runner=runner)
    nat = RelayNat(RelayNatNames.for_instance("bench"), RELAY_IP, ports, journal=journal,
                   runner=runner)  # fmt: skip
    nat.install()
    return nat, journal


# --- (a) kernel path -------------------------------------------------------------------------


def kernel_cases(lab: NetLab, sizes: Sizes) -> list[Case]:
    def measured(sport: int, dst: str, dport: int, ns: str, dev: str) -> Mapping[str, float]:
        before = lab.dropped(ns, dev)
        out = _flood(lab, sport, dst, dport, sizes)
        arrived = lab.dropped(ns, dev) - before
        if out["sent"] <= 0:
            raise RuntimeError("the flood sent nothing")
        return {
            "us": out["cpu_s"] / out["sent"] * 1e6,
            "kpps": out["sent"] / out["wall_s"] / 1e3,
            "arrived": arrived / out["sent"],
        }

    def sink() -> Mapping[str, float]:
        lab.drop_at(lab.relay, "rc")
        try:
            return measured(50010, NODE, 9, lab.relay, "rc")
        finally:
            lab.undrop(lab.relay, "rc")

    return [
        Case("sink (dropped on the relay's ingress)", sink),
        Case("routed, no relay (reference)", lambda: measured(50011, NODE, 9, lab.node, "vn")),
        Case(
            "UDP relay, kernel (nft DNAT/SNAT)",
            lambda: measured(50001, RELAY_IP, KPORT, lab.node, "vn"),
        ),
    ]


def kernel_table(results: Results) -> Table:
    sink, ref, relay = (
        "sink (dropped on the relay's ingress)",
        "routed, no relay (reference)",
        "UDP relay, kernel (nft DNAT/SNAT)",
    )
    t = Table(["row", "sender µs/datagram", "relay host µs/datagram (row − sink)",
               "× reference (host µs)", "kpps sent", "arrived"],
              title="Kernel-forwarded CPU per 1420 B datagram")  # fmt: skip
    for row in (sink, ref, relay):
        host = results.difference(row, "us", sink) if row != sink else None
        ratio = None
        if row == relay:
            r_rounds = results.values.get((relay, "us"), {})
            f_rounds = results.values.get((ref, "us"), {})
            s_rounds = results.values.get((sink, "us"), {})
            ratios = [
                (r_rounds[i] - s_rounds[i]) / (f_rounds[i] - s_rounds[i])
                for i in r_rounds
                if i in f_rounds and i in s_rounds and f_rounds[i] - s_rounds[i] > 0
            ]
            ratio = statistics.median(ratios) if ratios else None
        t.add([
            row,
            results.cell(row, "us"),
            "–" if host is None else fmt(host),
            "–" if ratio is None else f"{ratio:.2f}x",
            results.cell(row, "kpps"),
            results.cell(row, "arrived", spread=False),
        ])  # fmt: skip
    return t


# --- (b) userspace forwarder -----------------------------------------------------------------


def _bind(lab: NetLab, sport: int, port: int) -> bool:
    """One handshake through the relay port: the product's binding binds both legs."""
    client = lab.agent(lab.client, "client-hello", CLIENT, str(sport), RELAY_IP, str(port))
    assert client.stdout is not None
    client.stdout.readline()  # the first initiation is out: it is pending at the relay
    lab.run_agent(lab.node, "node-hello", NODE, str(sport + 1), RELAY_IP, str(port))
    out, _ = client.communicate(timeout=30)
    lines = [x for x in out.splitlines() if x.strip()]
    return bool(lines and json.loads(lines[-1]).get("bound"))


class _Server:
    def __init__(self, lab: NetLab, *args: str) -> None:
        self.proc = lab.agent(lab.relay, *args, stdin=True)
        self.read()

    def read(self) -> dict[str, float]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the relay agent exited {self.proc.wait(timeout=10)}")
        return dict(json.loads(line))

    def stats(self) -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=15)
        except (OSError, ValueError):
            pass


def user_cases(lab: NetLab, sizes: Sizes) -> list[Case]:
    def measured(server: _Server, sport: int, port: int) -> Mapping[str, float]:
        s0 = server.stats()
        out = _flood(lab, sport, RELAY_IP, port, sizes)
        s1 = server.stats()
        packets = s1["packets"] - s0["packets"]
        cpu = s1["cpu_s"] - s0["cpu_s"]
        if cpu <= 0 or packets <= 0:
            raise RuntimeError(f"nothing forwarded ({packets} datagrams)")
        return {
            "pps_cpu": packets / cpu,
            # The flood's own window: the stats calls around it also span process starts.
            "pps_wall": packets / out["wall_s"],
            "busy": cpu / out["wall_s"],
            "forwarded": packets / out["sent"],
        }

    def product() -> Mapping[str, float]:
        server = _Server(lab, "forwarder", RELAY_IP, str(UPORT), "--cpu", "1")
        try:
            if not _bind(lab, 50003, UPORT):
                raise RuntimeError("the handshake did not bind the session")
            return measured(server, 50003, UPORT)
        finally:
            server.close()

    def bare() -> Mapping[str, float]:
        server = _Server(lab, "bare", RELAY_IP, str(BPORT), NODE, "9", "--cpu", "1")
        try:
            return measured(server, 50005, BPORT)
        finally:
            server.close()

    return [
        Case("CPython recvfrom_into/sendto loop (reference)", bare),
        Case("Higgs.net userspace forwarder", product),
    ]


def user_table(results: Results) -> Table:
    ref, product = "CPython recvfrom_into/sendto loop (reference)", "Higgs.net userspace forwarder"
    t = Table(["row", "datagrams per CPU-second", "× reference", "datagrams/s (wall)",
               "forwarder CPU busy", "forwarded"],
              title="Userspace forwarder, one core, 1420 B")  # fmt: skip
    for row in (ref, product):
        ratio = results.ratio(row, "pps_cpu", ref) if row == product else None
        t.add([
            row,
            results.cell(row, "pps_cpu"),
            "–" if ratio is None else f"{ratio:.2f}x",
            results.cell(row, "pps_wall"),
            results.cell(row, "busy", spread=False),
            results.cell(row, "forwarded", spread=False),
        ])  # fmt: skip
    return t


# --- (c) leases ------------------------------------------------------------------------------


def leases(lab: NetLab, n: int, *, sample: int) -> tuple[Table, list[str]]:
    notes: list[str] = []
    t = Table(["measure", "value"], title=f"{n:,} leased ports on one relay address")
    server = _Server.__new__(_Server)
    server.proc = lab.agent(lab.relay, "lease", RELAY_IP, str(KPORT), str(n), stdin=True)
    opened = server.read()
    t.add(["ports opened by the forwarder", f"{int(opened['opened']):,} of {n:,}"])
    if opened["error"]:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        notes.append(
            f"the forwarder stopped at {int(opened['opened']):,} ports: {opened['error']} "
            f"(one socket per leased port; RLIMIT_NOFILE here is {soft:,}/{hard:,} and this "
            "machine does not allow raising it)"
        )
    t.add(["time to open", f"{fmt(opened['seconds'])} s"])
    t.add(["memory (RSS growth)", f"{opened['rss_bytes'] / max(opened['opened'], 1):.0f} B/port, "
                                  f"{opened['rss_bytes'] / 2**20:.1f} MiB"])  # fmt: skip
    got = int(opened["opened"])
    ports = sorted({KPORT, KPORT + max(got - 1, 0), KPORT + got // 2}) if sample > 1 else [KPORT]
    ok = [p for p in ports if _bind(lab, 51000 + 2 * (p - KPORT) % 10000, p)]
    t.add(["handshake crossed the relay (sample ports)",
           f"{len(ok)} of {len(ports)} ({', '.join(map(str, ports))})"])  # fmt: skip
    assert server.proc.stdin is not None
    server.proc.stdin.write("done\n")
    server.proc.stdin.flush()
    stopped = server.read()
    t.add(["time to close them all", f"{fmt(stopped['stop_seconds'])} s"])
    server.proc.wait(timeout=30)

    return t, notes


def many_flows(lab: NetLab, nat: RelayNat, n: int, t: Table, *, binds: int) -> None:
    """``n`` bound flows in the relay's maps (beside the kernel part's flow on KPORT)."""
    script = "".join(
        render_flow(nat.names, RELAY_IP,
                    Flow(KPORT + i, (f"10.1.{i // 250}.{i % 250 + 1}", 51820),
                         (NODE, 40000 + i % 20000)), add=True)
        for i in range(1, n)
    )  # fmt: skip
    t0 = time.monotonic()
    sh("ip", "netns", "exec", lab.relay, "nft", "-f", "-", input=script)
    load = time.monotonic() - t0
    listing = sh("ip", "netns", "exec", lab.relay, "nft", "-j", "list", "map", "ip",
                 nat.names.table, "to_peer")  # fmt: skip
    elements = 0
    for item in json.loads(listing).get("nftables", []):
        if "map" in item:
            elements = len(item["map"].get("elem", []))
    t.add([f"nft maps with {n:,} bound flows: load (one batch)", f"{fmt(load)} s"])
    t.add(["to_peer map elements (2 per flow)", f"{elements:,}"])
    per_bind = []
    for i in range(binds):
        flow = Flow(KPORT + n - 1 - i, ("10.3.0.1", 1000 + i), ("10.3.0.2", 2000 + i))
        t0 = time.monotonic()
        nat.add(flow)
        per_bind.append(time.monotonic() - t0)
    t.add(["one bind (RelayNat.add: nft + 2 conntrack commands)",
           f"{fmt(statistics.median(per_bind) * 1e3)} ms"])  # fmt: skip


# --- the part --------------------------------------------------------------------------------


def run(*, smoke: bool = False, rounds: int | None = None) -> Section:
    sizes = SMOKE if smoke else FULL
    rounds = rounds or (1 if smoke else 3)
    tables: list[Table] = []
    notes: list[str] = []
    # One lab, in this order: the userspace part and the sockets of the leases before the
    # relay's nft table exists (userspace mode has none, so no conntrack either), then the
    # table for the kernel part and the maps of many flows.
    with tempfile.TemporaryDirectory(prefix="udprelay-bench-") as tmpdir, NetLab() as lab:
        res = run_rounds(user_cases(lab, sizes), rounds=rounds, label="udprelay userspace")
        user = user_table(res)
        notes += unavailable_notes(res)
        progress(f"udprelay: {sizes.leases} leases")
        lease_table, more = leases(lab, sizes.leases, sample=1 if smoke else 3)
        notes += more
        nat, journal = _nat(lab, Path(tmpdir), (KPORT, KPORT + sizes.leases - 1))
        try:
            nat.add(Flow(KPORT, (CLIENT, 50001), (NODE, 50002)))
            res = run_rounds(kernel_cases(lab, sizes), rounds=rounds, label="udprelay kernel")
            tables += [kernel_table(res), user]
            notes += unavailable_notes(res)
            many_flows(lab, nat, sizes.leases, lease_table, binds=1 if smoke else 5)
            tables.append(lease_table)
        finally:
            journal.undo_all()
            journal.close()
    notes.append(
        f"Targets (issue 11): relay host CPU ≤ {TARGET_KERNEL_US:g} µs per forwarded datagram "
        f"once offloaded; userspace ≥ {TARGET_USER_PPS:,} datagrams/s on one core at {SIZE} B; "
        f"{TARGET_LEASES:,} leased ports on one address. Medians over {rounds} round(s) "
        "[min–max]; ratios per round against the reference of the same round. The machine is "
        "shared with other work: wall-clock rates measure the neighbours too, CPU-time figures "
        "much less."
    )
    return Section(TITLE, tables=tables, notes=notes)


def main(argv: Sequence[str] | None = None) -> int:
    return part_main(argv, prog="python -m bench.udprelay", description=__doc__, title=TITLE,
                     run=run)  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
