"""The measurements of one e2e row: iperf3 TCP both ways, iperf3 UDP at a fixed rate, ping
on an idle tunnel and ping during a saturating TCP download on the same tunnel (issue 13 item
3: queues must not bloat).

Every tool runs inside the client's namespace against the lab's internet host (the iperf3
server of the lab), so the traffic takes the path a user's traffic takes: client -> tunnel ->
node -> home router NAT -> internet. CPU is sampled from /proc for every process of the
client, node and server namespaces except the measuring tools themselves.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.harness import ProcSample, percentile, sample_procs
from higgs.lab import Host, Lab
from higgs.lab.lab import IPERF_PORT
from higgs.lab.procs import pids_in_netns

__all__ = [
    "HOSTS",
    "E2eSizes",
    "measure_row",
    "parse_iperf",
    "parse_ping",
    "pids_by_group",
    "sample",
]

# Hosts whose processes' CPU is charged to the row (the tunnel's three parties).
HOSTS = ("client", "node", "server")
# The measuring tools run in the client namespace too; their CPU is not the tunnel's.
_TOOLS = frozenset({"iperf3", "ping", "ip", "taskset"})
_PING_TIME = re.compile(r"time[=<]([0-9.]+) ms")


@dataclass(frozen=True)
class E2eSizes:
    seconds: float = 5.0  # per iperf3 test
    udp_rate_mbit: float = 100.0  # offered UDP rate
    udp_len: int = 1200  # UDP payload; fits the 1420 tunnel MTU
    pings: int = 500
    ping_interval: float = 0.01


def pids_by_group(lab: Lab, groups: Mapping[str, str]) -> dict[str, list[int]]:
    """The PIDs in the namespaces of the hosts ``groups`` names (role -> group; several
    hosts may share a group, e.g. every client host of bench/growth), by group."""
    paths = {Path("/run/netns") / lab.host(role).ns: g for role, g in groups.items()}
    found = pids_in_netns(paths)
    by_group: dict[str, list[int]] = {g: [] for g in groups.values()}
    for pid, ns in found.items():
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm in _TOOLS:
            continue
        by_group[paths[Path("/run/netns") / ns]].append(pid)
    return by_group


def _pids_by_host(lab: Lab) -> dict[str, list[int]]:
    return pids_by_group(lab, {h: h for h in HOSTS})


def sample(pids: Mapping[str, list[int]]) -> dict[str, ProcSample]:
    """CPU seconds of each group's processes now."""
    return {h: sample_procs(p) for h, p in pids.items()}


def parse_iperf(text: str) -> tuple[float, float, float]:
    """(received bits/s, received bytes, lost %) from ``iperf3 -J`` output."""
    data = json.loads(text)
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    end = data["end"]
    if "sum_received" in end:  # TCP (and UDP on newer iperf3)
        rcv = end["sum_received"]
        lost = float(end.get("sum", {}).get("lost_percent", 0.0))
        return float(rcv["bits_per_second"]), float(rcv["bytes"]), lost
    # UDP on iperf3 3.12: one "sum", from the sender's view plus the receiver's loss count.
    s = end["sum"]
    lost = float(s.get("lost_percent", 0.0))
    keep = 1.0 - lost / 100.0
    return float(s["bits_per_second"]) * keep, float(s["bytes"]) * keep, lost


def parse_ping(text: str) -> list[float]:
    """Round-trip times in ms of every answered ping."""
    return [float(m.group(1)) for m in _PING_TIME.finditer(text)]


def _iperf(client: Host, target: str, sizes: E2eSizes, *extra: str) -> tuple[float, float, float]:
    argv = [
        "iperf3",
        "-c",
        target,
        "-p",
        str(IPERF_PORT),
        "-J",
        "-t",
        f"{sizes.seconds:g}",
        "--connect-timeout",
        "3000",
        *extra,
    ]
    out = client.run(argv, check=False, timeout=sizes.seconds + 30)
    if not out.stdout.strip():
        raise RuntimeError(f"iperf3 {' '.join(extra)} printed nothing: {out.stderr.strip()}")
    return parse_iperf(out.stdout)


def measure_row(lab: Lab, sizes: E2eSizes) -> dict[str, float]:
    """All figures of one row, one round. Keys are the metric names of the tables."""
    client, target = lab.client, lab.internet.ip
    pids = _pids_by_host(lab)
    values: dict[str, float] = {}
    cpu = dict.fromkeys(HOSTS, 0.0)
    gigabytes = 0.0
    for metric, extra in (("tcp_up", ()), ("tcp_down", ("-R",))):
        before = sample(pids)
        bps, nbytes, _ = _iperf(client, target, sizes, *extra)
        after = sample(pids)
        values[metric] = bps / 1e6
        gigabytes += nbytes / 1e9
        for h in HOSTS:
            cpu[h] += after[h].cpu_since(before[h])
    for h in HOSTS:
        # CPU seconds per GB moved through the tunnel, over both TCP directions together.
        values[f"cpu_{h}"] = cpu[h] / gigabytes if gigabytes else float("nan")
    bps, _, lost = _iperf(
        client,
        target,
        sizes,
        "-u",
        "-b",
        f"{sizes.udp_rate_mbit:g}M",
        "-l",
        str(sizes.udp_len),
    )
    values["udp"] = bps / 1e6
    values["udp_loss"] = lost
    out = client.run(
        [
            "ping",
            "-n",
            "-i",
            f"{sizes.ping_interval:g}",
            "-c",
            str(sizes.pings),
            "-W",
            "1",
            target,
        ],
        check=False,
        timeout=sizes.pings * sizes.ping_interval + 30,
    )
    rtts = parse_ping(out.stdout)
    if not rtts:
        raise RuntimeError(f"no ping answered: {out.stdout[-200:]} {out.stderr[-200:]}")
    values["ping_p50"] = percentile(rtts, 50)
    values["ping_p99"] = percentile(rtts, 99)
    values["ping_loss"] = 100.0 * (1 - len(rtts) / sizes.pings)
    loaded = _ping_under_download(client, target, sizes)
    values["loaded_p50"] = percentile(loaded, 50)
    values["loaded_p99"] = percentile(loaded, 99)
    return values


def _ping(client: Host, target: str, count: int, interval: float) -> list[float]:
    argv = ["ping", "-n", "-i", f"{interval:g}", "-c", str(count), "-W", "1", target]
    out = client.run(argv, check=False, timeout=count * interval + 30)
    return parse_ping(out.stdout)


def _ping_under_download(client: Host, target: str, sizes: E2eSizes) -> list[float]:
    """Pings through the tunnel while an iperf3 download fills it: what a video call feels
    while a file comes in. The pings start 1 s into the download (TCP's slow start over; a
    quarter of it in the smoke) and end before it does."""
    errors: list[BaseException] = []

    def download() -> None:
        try:
            _iperf(client, target, sizes, "-R")
        except BaseException as exc:  # reported below, after the pings
            errors.append(exc)

    loader = threading.Thread(target=download, name="bench-download")
    loader.start()
    lead = min(1.0, sizes.seconds / 4)  # (the smoke's downloads last 1 s)
    time.sleep(lead)
    count = max(5, int((sizes.seconds - 2 * lead) / sizes.ping_interval))
    rtts = _ping(client, target, count, sizes.ping_interval)
    loader.join(sizes.seconds + 60)
    if errors:
        raise RuntimeError(f"the download under the pings failed: {errors[0]}")
    if not rtts:
        raise RuntimeError("no ping answered during the download")
    return rtts
