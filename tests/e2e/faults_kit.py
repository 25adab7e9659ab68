"""Tools of the fault tests (tests/e2e/test_faults.py): a PostgreSQL cluster inside the
server's namespace, continuous ping probes that say when traffic flowed, and a wall clock
for one host's processes that the test can step (libfaketime).

The probes measure, never sleep: a ``ping -D -O`` runs in the client's namespace through the
tunnel for the whole scenario, and every reply and every "no answer yet" is timestamped by
ping itself. A recovery time is the first reply after the fault ended minus the fault's end; a
loss window is a run of unanswered requests.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from higgs.lab import Host, Lab
from higgs.lab.procs import LabProcess

__all__ = [
    "FAKETIME_LIB",
    "LabPostgres",
    "PingProbe",
    "SkewedClock",
]

PG_BINDIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
PG_PORT = 5432
SHIM_DIR = Path(__file__).with_name("faketime_site")


@dataclass
class SkewedClock:
    """One host's wall clock, movable while its processes run: every process started with
    :attr:`env` reads its offset from ``path`` (libfaketime's FAKETIME_TIMESTAMP_FILE, re-read
    each second), so :meth:`set` steps the clock of a running daemon as NTP or a resume from
    suspend would. Only the wall clock moves; the monotonic clock (asyncio's timers, every
    timeout) stays the real one, as on a real host. The faketime_site shim works around
    libfaketime's broken time.sleep in that mode. Go programs (wireguard-go) read the clock
    without libc and keep the true time: the product must not care (osnet.handshakes)."""

    path: Path

    def __post_init__(self) -> None:
        self.set("+0")

    def set(self, offset: str) -> None:
        """``offset`` in libfaketime's syntax (``+5m``, ``-5m``, ``+0``)."""
        tmp = self.path.with_suffix(".new")
        tmp.write_text(offset + "\n")
        tmp.replace(self.path)  # atomic: a reader never sees an empty file

    @property
    def env(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(SHIM_DIR), os.environ.get("PYTHONPATH", "")) if p)
        return {
            "LD_PRELOAD": str(FAKETIME_LIB),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_CACHE_DURATION": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "PYTHONPATH": path,
        }


@dataclass
class LabPostgres:
    """A throwaway PostgreSQL cluster inside ``host``'s namespace, on its loopback (as a
    database on the server's own machine would be): fsync off, trust auth, stopped and
    deleted by :meth:`destroy`. Its data directory is inside the lab's work directory, so the
    lab's leftover check notices a postmaster that outlived the test."""

    lab: Lab
    host: Host
    root: Path = field(init=False)

    def __post_init__(self) -> None:
        assert self.lab.workdir is not None
        self.root = self.lab.workdir / "postgres"
        self.bindir = PG_BINDIRS[0]
        self.pw = pwd.getpwnam("postgres")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{PG_PORT}/boson"

    def _as_postgres(self, *argv: str, timeout: float = 60) -> str:
        out = self.host.run(["runuser", "-u", "postgres", "--", *argv], timeout=timeout)
        return out.stdout

    def create(self) -> None:
        self.root.mkdir(mode=0o700)
        (self.root / "sock").mkdir()
        for path in (self.root, self.root / "sock"):
            os.chown(path, self.pw.pw_uid, self.pw.pw_gid)
        # The postgres user must be able to walk down to its directory.
        parent = self.root.parent
        parent.chmod(parent.stat().st_mode | 0o001)
        self.host.run(["ip", "link", "set", "lo", "up"])
        self._as_postgres(
            str(self.bindir / "initdb"), "-D", str(self.root / "data"), "-A", "trust",
            "-U", "postgres", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        self.start()
        self._as_postgres(
            str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(PG_PORT), "boson"
        )

    def start(self) -> None:
        opts = (
            f"-p {PG_PORT} -k {self.root / 'sock'} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._as_postgres(
            str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-o", opts,
            "-l", str(self.root / "log"), "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(
            str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", mode, "-w", "stop"
        )

    def destroy(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            subprocess.run(
                ["runuser", "-u", "postgres", "--", str(self.bindir / "pg_ctl"),
                 "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop"],
                check=False, capture_output=True, timeout=60,
            )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)")
_NO_ANSWER = re.compile(r"^\[(\d+\.\d+)\] no answer yet for icmp_seq=(\d+)")


@dataclass
class PingProbe:
    """``ping -D -O`` every ``interval`` s from ``host`` to ``target`` for at most ``limit`` s
    (bounded), its log parsed into replies and misses (wall-clock timestamps from ping)."""

    host: Host
    target: str
    interval: float = 0.2
    limit: float = 600.0
    proc: LabProcess | None = None

    def start(self) -> PingProbe:
        # ping quits on some errors (a "Packet filtered" from the kill switch while the client
        # changes routes, "Destination Host Unreachable" from a node whose uplink is down):
        # the probe starts it again at once, bounded by ``limit`` as a whole. Each run begins
        # with a "PING" line and counts its sequence numbers from 1 again.
        count = int(self.limit / self.interval)
        ping = f"ping -D -O -n -i {self.interval:g} -W 1 -c {count} -w {self.limit:g} {self.target}"
        self.proc = self.host.popen(
            ["timeout", f"{self.limit:g}", "sh", "-c", f"while :; do {ping}; sleep 0.1; done"],
            name="ping-probe",
        )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.alive():
            self.proc.popen.terminate()
            try:
                self.proc.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.popen.kill()
                self.proc.popen.wait(5)

    def _events(self) -> tuple[dict[tuple[int, int], float], dict[tuple[int, int], float]]:
        """Replies and misses by (run of ping, icmp_seq)."""
        assert self.proc is not None
        replies: dict[tuple[int, int], float] = {}
        misses: dict[tuple[int, int], float] = {}
        run = 0
        for line in self.proc.log_text().splitlines():
            if line.startswith("PING "):
                run += 1
            elif m := _REPLY.match(line):
                replies.setdefault((run, int(m.group(2))), float(m.group(1)))
            elif m := _NO_ANSWER.match(line):
                misses.setdefault((run, int(m.group(2))), float(m.group(1)))
        return replies, misses

    def replies_after(self, t: float) -> list[float]:
        replies, _ = self._events()
        return sorted(ts for ts in replies.values() if ts >= t)

    def first_reply_after(self, t: float) -> float | None:
        after = self.replies_after(t)
        return after[0] if after else None

    def lost_between(self, start: float, end: float) -> list[tuple[int, int]]:
        """Requests sent in [start, end] that never got a reply, not even a late one (``-O``
        prints "no answer yet" when it sends the next request, one interval later)."""
        replies, misses = self._events()
        return sorted(
            seq
            for seq, ts in misses.items()
            if start <= ts - self.interval <= end and seq not in replies
        )

    def flowing_since(self, t: float, *, replies: int = 3) -> float | None:
        """When traffic was flowing again after ``t``: the first of ``replies`` consecutive
        answers after ``t`` (one lucky packet is not a path). None: not yet."""
        got, _ = self._events()
        seqs = sorted(key for key, ts in got.items() if ts >= t)
        for i, (run, seq) in enumerate(seqs):
            window = seqs[i : i + replies]
            if len(window) == replies and window[-1] == (run, seq + replies - 1):
                return got[(run, seq)]
        return None


def wall() -> float:
    return time.time()
