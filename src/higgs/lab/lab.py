"""The lab: builds the namespaces of one run, hands out hosts, and always tears down.

    with Lab() as lab:
        lab.client.run(["curl", ...])

Build order writes ahead: the run is registered (and its namespaces recorded) before anything
is created, so every exit path -- the context manager, a pytest finalizer, SIGTERM/SIGINT,
atexit -- can remove whatever a half-done build left. Teardown runs every step even when one
fails and reports all failures together.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from . import registry, secretscan
from .errors import CommandError, LabError
from .host import Host
from .names import RunNames, new_run_names
from .netns import NETNS_DIR, netns_exists, ns_argv, run
from .plan import ROUTER_ROLES, LabPlan, NatType, default_plan, ipv6_plan
from .procs import LabProcess, pids_in_netns, pids_mentioning, start_process, stop_processes
from .render import (
    render_dnat_udp,
    render_host_batch,
    render_ipv6_batch,
    render_masquerade,
    render_nat_table,
    render_root_batch,
)

__all__ = [
    "DNS_ZONE",
    "WG_RUN_DIR",
    "DnsQuery",
    "Download",
    "Lab",
    "leftovers_of_run",
    "parse_dns_log",
    "sweep_run",
]

WG_RUN_DIR = Path("/var/run/wireguard")
DNS_ZONE = "example.test"
WHOAMI_PORT = 80
IPERF_PORT = 5201
# One iperf3 server runs one test at a time: a second one for two clients measured at once.
IPERF_PORTS = (IPERF_PORT, 5202)
SMTP_PORTS = (25, 587)
PRINTER_PORT = 9100

_DNS_LOG_RE = re.compile(r"query\[(?P<qtype>\w+)\] (?P<name>\S+) from (?P<source>\S+)")


@dataclass(frozen=True)
class DnsQuery:
    """One query the lab's DNS server logged."""

    name: str
    qtype: str
    source: str


@dataclass(frozen=True)
class Download:
    """What :meth:`Lab.download` received: its size and SHA-256, to compare with
    ``higgs.lab.services.whoami.payload_sha256(size)``."""

    nbytes: int
    sha256: str
    seconds: float


def parse_dns_log(text: str) -> list[DnsQuery]:
    """The queries in a dnsmasq ``--log-queries`` log."""
    return [
        DnsQuery(name=m["name"], qtype=m["qtype"], source=m["source"])
        for m in _DNS_LOG_RE.finditer(text)
    ]


def sweep_run(names: RunNames, *, extra_ifnames: Iterable[str] = ()) -> list[str]:
    """Remove everything named for run ``names``, without any other state (last defence).

    Kills every process inside the run's namespaces (they can only be ours), removes the
    run's wireguard-go sockets, deletes the run's namespaces (which deletes their interfaces).
    Every step runs; returns the problems met.
    """
    problems: list[str] = []
    try:
        namespaces = sorted(n for n in os.listdir(NETNS_DIR) if names.owns(n))
    except FileNotFoundError:
        namespaces = []
    for pid, ns in pids_in_netns(NETNS_DIR / n for n in namespaces).items():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        except OSError as exc:
            problems.append(f"cannot kill pid {pid} in {ns}: {exc}")
    ifnames = set(extra_ifnames)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(WG_RUN_DIR):
            ifname = entry.removesuffix(".sock")
            if entry.endswith(".sock") and (ifname in ifnames or names.owns(ifname)):
                try:
                    (WG_RUN_DIR / entry).unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    problems.append(f"cannot remove {WG_RUN_DIR / entry}: {exc}")
    if namespaces:
        batch = "".join(f"netns del {ns}\n" for ns in namespaces)
        result = run(["ip", "-force", "-batch", "-"], input=batch, check=False)
        left = [ns for ns in namespaces if netns_exists(ns)]
        if left:
            problems.append(f"namespaces not deleted: {', '.join(left)} ({result.stderr.strip()})")
    return problems


def leftovers_of_run(names: RunNames, pids: Sequence[int] = ()) -> list[str]:
    """What of run ``names`` still exists on this machine (empty when it is all gone)."""
    found: list[str] = []
    with contextlib.suppress(FileNotFoundError):
        found += [f"namespace {n}" for n in sorted(os.listdir(NETNS_DIR)) if names.owns(n)]
    found += [
        f"link {n} in the root namespace" for n in os.listdir("/sys/class/net") if names.owns(n)
    ]
    with contextlib.suppress(FileNotFoundError):
        found += [
            f"wireguard socket {WG_RUN_DIR / n}"
            for n in sorted(os.listdir(WG_RUN_DIR))
            if names.owns(n.removesuffix(".sock"))
        ]
    for pid in pids:
        try:
            # A zombie is gone for our purposes; anything else with the PID is still running.
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            found.append(f"process {pid}")
    # Whatever still runs with our names in its command line (`ip netns exec hl-..-node ...`,
    # `wireguard-go -f hl-..-wgn`) is ours and should not exist any more.
    found += [
        f"process {pid} ({cmd[:120]})"
        for pid, cmd in pids_mentioning(names.stem + "-").items()
        if pid not in pids
    ]
    found += [
        f"work directory {p}"
        for p in Path(tempfile.gettempdir()).glob(f"{names.stem}-*")
        if p.is_dir()
    ]
    return found


class Lab:
    """A small internet in network namespaces (see ``docs/lab.md`` for the picture).

    Hosts: ``internet``, ``server``, ``home_router``, ``node``, ``printer``,
    ``client_router``, ``client`` (and ``core``, the router between them).
    """

    def __init__(
        self,
        *,
        prefix: str = "hl",
        services: bool = True,
        forward_udp: Sequence[int] = (),
        plan: LabPlan | None = None,
        ipv6: bool = False,
        ipv6_without: Collection[str] = (),
    ) -> None:
        self.names: RunNames = new_run_names(prefix)
        self.plan = plan or default_plan()
        self.hosts: dict[str, Host] = {
            role: Host(role, self.names.ns(role), hp, self) for role, hp in self.plan.hosts.items()
        }
        # IPv6 is opt-in: global 2001:db8::/32 on the public side and on both LANs (routed,
        # not NATed, as an ISP delegates a prefix). See plan.ipv6_plan.
        self.ipv6 = ipv6
        # ``ipv6_without`` names hosts left IPv4-only (e.g. a node whose uplink has no IPv6
        # while the client's network has it).
        if ipv6:
            for role, v6 in ipv6_plan(self.plan).items():
                if role not in ipv6_without:
                    self.hosts[role].v6 = v6
        self.workdir: Path | None = None
        self.secret_findings: list[secretscan.Finding] = []
        self.timings: dict[str, float] = {}
        self._services = services
        self._initial_forwards = tuple(forward_udp)
        self._procs: list[LabProcess] = []
        self._wg_ifnames: set[str] = set()
        self.dns_log: Path | None = None
        self._built = False
        self._torn_down = False
        self._set_nat: set[str] = set()
        self.nat_types: dict[str, NatType] = {
            role: h.nat for role, h in self.plan.hosts.items() if h.wan_if is not None
        }

    # -- hosts ---------------------------------------------------------------------------

    def host(self, role: str) -> Host:
        try:
            return self.hosts[role]
        except KeyError:
            raise LabError(f"no host {role!r}; hosts are {', '.join(self.hosts)}") from None

    @property
    def core(self) -> Host:
        return self.hosts["core"]

    @property
    def internet(self) -> Host:
        return self.hosts["internet"]

    @property
    def server(self) -> Host:
        return self.hosts["server"]

    @property
    def home_router(self) -> Host:
        return self.hosts["home_router"]

    @property
    def node(self) -> Host:
        return self.hosts["node"]

    @property
    def printer(self) -> Host:
        return self.hosts["printer"]

    @property
    def client_router(self) -> Host:
        return self.hosts["client_router"]

    @property
    def client(self) -> Host:
        return self.hosts["client"]

    # -- building ------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self.build()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()

    def _no_dad_argv(self, role: str) -> list[str]:
        ifaces = [cable.a_if for cable in self.plan.cables if cable.a == role]
        ifaces += [cable.b_if for cable in self.plan.cables if cable.b == role]
        keys = ["all", "default", *ifaces]
        return ["sysctl", "-qw", *(f"net.ipv6.conf.{k}.accept_dad=0" for k in keys)]

    def build(self) -> Lab:
        """Create the namespaces, cables, addresses, routes, NAT and (optionally) services."""
        if self._built:
            raise LabError("lab already built")
        self._built = True
        registry.register(self)
        started = time.monotonic()
        try:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.names.stem}-"))
            run(["ip", "-batch", "-"], input=render_root_batch(self.plan, self.names))
            # No IPv6 duplicate address detection: while it runs, link-local addresses are
            # "tentative" and their routes missing, so two snapshots of an unchanged host
            # would differ by timing alone (seen under load). Set before any link is up.
            self._run_parallel(
                [(ns_argv(h.ns, self._no_dad_argv(role)), None) for role, h in self.hosts.items()]
            )
            self._run_parallel(
                [
                    (["ip", "-n", h.ns, "-batch", "-"], render_host_batch(self.plan, role))
                    for role, h in self.hosts.items()
                ]
            )
            jobs: list[tuple[list[str], str | None]] = []
            if self.ipv6:
                self._run_parallel(
                    [
                        (["ip", "-n", h.ns, "-batch", "-"], render_ipv6_batch(h.v6))
                        for h in self.hosts.values()
                        if h.v6 is not None
                    ]
                )
            for role in ROUTER_ROLES:
                h = self.hosts[role]
                script = "sysctl -qw net.ipv4.ip_forward=1"
                if self.ipv6:
                    script += " && sysctl -qw net.ipv6.conf.all.forwarding=1"
                if h.plan.wan_if is not None:
                    script += " && nft -f -"
                jobs.append(
                    (
                        ns_argv(h.ns, ["sh", "-c", script]),
                        render_nat_table(self.plan, role) if h.plan.wan_if else None,
                    )
                )
            self._run_parallel(jobs)
            for port in self._initial_forwards:
                self.forward_udp(port)
            self.timings["network"] = time.monotonic() - started
            if self._services:
                self._start_services()
        except BaseException:
            self.timings["build"] = time.monotonic() - started
            self.teardown()
            raise
        self.timings["build"] = time.monotonic() - started
        return self

    def _run_parallel(self, jobs: Sequence[tuple[list[str], str | None]]) -> None:
        """Run independent commands at once; raise one error naming every failure."""
        procs = [
            (
                argv,
                subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                ),
                data,
            )
            for argv, data in jobs
        ]
        failures: list[str] = []
        for argv, proc, data in procs:
            try:
                out, _ = proc.communicate(input=data, timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            if proc.returncode != 0:
                failures.append(str(CommandError(argv, proc.returncode, out or "")))
        if failures:
            raise LabError("; ".join(failures))

    def _start_services(self) -> None:
        py = sys.executable
        inet = self.internet
        ip = inet.ip
        zone = DNS_ZONE
        assert self.workdir is not None
        dns_log = self.workdir / "dnsmasq-queries.log"
        waits: list[tuple[LabProcess, int, str]] = []
        whoami = inet.popen(
            [py, "-m", "higgs.lab.services.whoami", "--host", ip, "--port", str(WHOAMI_PORT)],
            name="whoami",
        )
        waits.append((whoami, WHOAMI_PORT, "tcp"))
        if inet.v6 is not None:
            whoami6 = inet.popen(
                [py, "-m", "higgs.lab.services.whoami", "--host", inet.ip6,
                 "--port", str(WHOAMI_PORT)],
                name="whoami6",
            )  # fmt: skip
            waits.append((whoami6, WHOAMI_PORT, "tcp6"))
        listen_argv = [py, "-m", "higgs.lab.services.listen", "--host", ip, "--banner", "220"]
        for port in SMTP_PORTS:
            listen_argv += ["--port", str(port)]
        smtp = inet.popen(listen_argv, name="smtp")
        waits += [(smtp, p, "tcp") for p in SMTP_PORTS]
        dns = inet.popen(
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--pid-file=",
                "--user=root",
                "--bind-interfaces",
                f"--listen-address={ip}" + (f",{inet.ip6}" if inet.v6 is not None else ""),
                "--port=53",
                "--log-queries",
                f"--log-facility={dns_log}",
                f"--local=/{zone}/",
                f"--host-record={zone},{ip}" + (f",{inet.ip6}" if inet.v6 else ""),
                f"--host-record=www.{zone},{ip}" + (f",{inet.ip6}" if inet.v6 else ""),
                f"--host-record=server.{zone},{self.server.ip}"
                + (f",{self.server.ip6}" if self.server.v6 else ""),
            ],
            name="dnsmasq",
        )
        waits.append((dns, 53, "udp"))
        for port in IPERF_PORTS:
            iperf = inet.popen(["iperf3", "-s", "-B", ip, "-p", str(port)], name=f"iperf3-{port}")
            waits.append((iperf, port, "tcp"))
        printer = self.printer.popen(
            [
                py,
                "-m",
                "higgs.lab.services.listen",
                "--host",
                self.printer.ip,
                "--banner",
                "printer ready",
                "--port",
                str(PRINTER_PORT),
            ],
            name="printer",
        )
        waits.append((printer, PRINTER_PORT, "tcp"))
        for proc, port, proto in waits:
            proc.wait_listening(port, proto=proto, timeout=15.0)
        self.dns_log = dns_log

    # -- using ---------------------------------------------------------------------------

    def spawn(
        self,
        host: Host,
        argv: Sequence[str],
        *,
        name: str | None = None,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> LabProcess:
        """Start ``argv`` in ``host``'s namespace in the background, tracked by PID."""
        if self._torn_down or not self._built or self.workdir is None:
            raise LabError("the lab is not running")
        label = name or Path(argv[0]).name
        log_path = log or self.workdir / f"{host.role}-{label}-{len(self._procs)}.log"
        proc = start_process(
            argv, run_argv=ns_argv(host.ns, argv), name=label, host=host.role, log=log_path, env=env
        )
        self._procs.append(proc)
        return proc

    @property
    def processes(self) -> list[LabProcess]:
        return list(self._procs)

    def log_tails(self, lines: int = 15) -> str:
        """The last lines of every process log, for a failure report."""
        parts = []
        for proc in self._procs:
            tail = proc.log_text().splitlines()[-lines:]
            state = "running" if proc.alive() else f"exited {proc.popen.returncode}"
            parts.append(f"--- {proc.host}/{proc.name} (pid {proc.pid}, {state})")
            parts += tail
        return "\n".join(parts)

    def ifname(self, tag: str) -> str:
        """A unique interface name for this run, e.g. ``hl-3fa9c1-wgn`` (<= 15 characters).

        Interface names here are machine-wide unique because wireguard-go's control socket
        ``/var/run/wireguard/<ifname>.sock`` lives outside the namespaces; the socket of every
        name handed out is removed at teardown.
        """
        name = self.names.ifname(tag)
        self._wg_ifnames.add(name)
        return name

    def forward_udp(
        self,
        port: int,
        *,
        to: str = "node",
        to_port: int | None = None,
        router: str = "home_router",
    ) -> None:
        """Port-forward UDP ``port`` on ``router``'s public address to host ``to``."""
        target = self.host(to)
        self.host(router).nft(render_dnat_udp(self.plan, router, port, target.ip, to_port or port))

    def set_nat(self, router: str, nat: NatType) -> None:
        """Makes ``router`` a cone, symmetric or full-cone NAT from now on (plan.NatType); its
        connection tracking is flushed, so every flow gets a mapping of the new kind; its
        ``input`` chain drops unsolicited UDP from the WAN from now on (render_masquerade).
        Asking again for the type it has already changes nothing."""
        if self.nat_types.get(router) == nat and router in self._set_nat:
            return
        self.host(router).nft(render_masquerade(self.plan, router, nat))
        self.host(router).run(["conntrack", "-F"], check=False)
        self.nat_types[router] = nat
        self._set_nat.add(router)

    def whoami(
        self, host: Host | str, *, timeout: float = 10.0, ipv6: bool = False
    ) -> dict[str, object]:
        """Ask the internet host's HTTP server, from ``host``, who we look like (over IPv6
        with ``ipv6``, in a ``Lab(ipv6=True)``)."""
        h = self.host(host) if isinstance(host, str) else host
        url = (
            f"http://[{self.internet.ip6}]:{WHOAMI_PORT}/"
            if ipv6
            else (f"http://{self.internet.ip}:{WHOAMI_PORT}/")
        )
        out = h.run(
            [
                "curl",
                "-sS",
                "--noproxy",
                "*",
                "--max-time",
                str(timeout),
                "-g",
                url,
            ],
            timeout=timeout + 5,
        ).stdout
        try:
            data = json.loads(out)
        except ValueError as exc:
            raise LabError(f"whoami answered {out!r}, not JSON") from exc
        if not isinstance(data, dict):
            raise LabError(f"whoami answered {out!r}, not an object")
        return data

    def download(self, host: Host | str, size: int, *, timeout: float = 60.0) -> Download:
        """Fetch ``size`` generated bytes from the internet host's HTTP server, from ``host``.

        curl writes them into the lab's work directory; the file is hashed here and removed.
        A failed or cut transfer raises CommandError (curl's exit code and message).
        """
        h = self.host(host) if isinstance(host, str) else host
        if self.workdir is None:
            raise LabError("the lab is not running")
        target = self.workdir / f"download-{h.role}-{time.monotonic_ns()}.bin"
        started = time.monotonic()
        try:
            h.run(
                [
                    "curl", "-sS", "--fail", "--noproxy", "*", "--max-time", str(timeout),
                    "-o", str(target), f"http://{self.internet.ip}:{WHOAMI_PORT}/bytes/{size}",
                ],
                timeout=timeout + 5,
            )  # fmt: skip
            seconds = time.monotonic() - started
            digest = hashlib.sha256()
            nbytes = 0
            with open(target, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
                    nbytes += len(chunk)
        finally:
            target.unlink(missing_ok=True)
        return Download(nbytes=nbytes, sha256=digest.hexdigest(), seconds=seconds)

    def cable_peer(self, host: Host | str, ifname: str) -> tuple[Host, str] | None:
        """The other end of the veth ``ifname`` of ``host`` (None for a bridge or a link the
        lab did not create)."""
        role = host if isinstance(host, str) else host.role
        for cable in self.plan.cables:
            if (cable.a, cable.a_if) == (role, ifname):
                return self.host(cable.b), cable.b_if
            if (cable.b, cable.b_if) == (role, ifname):
                return self.host(cable.a), cable.a_if
        return None

    def set_mtu(self, host: Host | str, ifname: str, mtu: int, *, both_ends: bool = True) -> None:
        """Set the MTU of ``host``'s interface ``ifname`` and (by default) of the veth's other
        end, so the link carries at most ``mtu`` bytes both ways; the routers on either side
        then answer larger don't-fragment packets with ICMP "fragmentation needed".

            lab.set_mtu("home_router", "wan0", 1400)   # the home's uplink to the core
        """
        if not 68 <= mtu <= 65535:
            raise LabError(f"MTU {mtu} is outside 68..65535")
        h = self.host(host) if isinstance(host, str) else host
        ends = [(h, ifname)]
        peer = self.cable_peer(h, ifname)
        if both_ends and peer is not None:
            ends.append(peer)
        for end_host, end_if in ends:
            end_host.run(["ip", "link", "set", "dev", end_if, "mtu", str(mtu)])

    def mtu(self, host: Host | str, ifname: str) -> int:
        """The current MTU of ``host``'s interface ``ifname``."""
        h = self.host(host) if isinstance(host, str) else host
        out = h.run(["cat", f"/sys/class/net/{ifname}/mtu"]).stdout
        return int(out.strip())

    def resolve(
        self,
        host: Host | str,
        name: str,
        *,
        timeout: float = 5.0,
        server: str | None = None,
        tcp: bool = False,
    ) -> list[str]:
        """Resolve ``name`` (A) from ``host`` by asking ``server`` (default: the lab's DNS
        server) directly, over UDP or (``tcp``) TCP. No answer raises CommandError."""
        h = self.host(host) if isinstance(host, str) else host
        out = h.run(
            [
                sys.executable,
                "-m",
                "higgs.lab.services.dnsq",
                "--server",
                server or self.internet.ip,
                "--timeout",
                str(timeout),
                *(["--tcp"] if tcp else []),
                name,
            ],
            timeout=timeout + 10,
        ).stdout
        answers = json.loads(out)["answers"]
        return [str(a) for a in answers]

    def dns_queries(self) -> list[DnsQuery]:
        """Every query the lab's DNS server has logged so far, with the address that asked."""
        if self.dns_log is None:
            return []
        try:
            text = self.dns_log.read_text(errors="replace")
        except OSError:
            return []
        return parse_dns_log(text)

    def wait_dns_queries(
        self, name: str, *, count: int = 1, timeout: float = 5.0
    ) -> list[DnsQuery]:
        """The logged queries for ``name``, waiting until there are ``count`` of them.

        dnsmasq may answer before its log line reaches the file, hence the wait.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = [q for q in self.dns_queries() if q.name == name]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    # -- tearing down --------------------------------------------------------------------

    def teardown(self) -> None:
        """Stop our processes, delete our namespaces and sockets; idempotent and tolerant.

        Every call runs every step (each is a no-op when there is nothing left), so a second
        call also removes what a build step still running during the first one created.
        """
        self._torn_down = True
        started = time.monotonic()
        problems: list[str] = []
        steps = (self._stop_tracked, self._sweep, self._scan_logs, self._remove_workdir)
        for step in steps:
            try:
                problems += step()
            except Exception as exc:
                problems.append(f"{step.__name__}: {exc}")
        registry.forget(self)
        self.timings["teardown"] = time.monotonic() - started
        if problems:
            raise LabError(f"lab {self.names.stem} teardown: " + "; ".join(problems))

    def _stop_tracked(self) -> list[str]:
        return stop_processes(self._procs)

    def _sweep(self) -> list[str]:
        return sweep_run(self.names, extra_ifnames=self._wg_ifnames)

    def _scan_logs(self) -> list[str]:
        # Last look at what the processes wrote before it is deleted (docs/security.md):
        # recorded, not raised, so the teardown still completes; the test session fails on it.
        if self.workdir is not None:
            self.secret_findings += secretscan.scan(self.workdir)
        return []

    def _remove_workdir(self) -> list[str]:
        if self.workdir is None or not self.workdir.exists():
            return []
        shutil.rmtree(self.workdir, ignore_errors=True)
        return [f"cannot remove {self.workdir}"] if self.workdir.exists() else []

    def leftovers(self) -> list[str]:
        """What of this run still exists; empty after a complete teardown."""
        return leftovers_of_run(self.names, [p.pid for p in self._procs])
