"""Support for the client's end-to-end tests: bosonserver, higgsnode and higgsvpn in the lab.

The lab (``higgs.lab``): the internet host (whoami HTTP, a DNS server that logs who asked),
bosonserver's host, a node behind the NAT home router (public 203.0.113.10) and a client behind
its own NAT router (public 203.0.113.20). What a user would check is what we assert: the
address the internet host sees, where DNS questions come from, that the relay carried nothing
in direct mode, that the client host is exactly as before after disconnect.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

import pytest

from higgs.lab import Host, Lab
from higgs.lab.plan import Bridge, Cable, HostPlan, LabPlan, default_plan
from higgs.lab.procs import LabProcess
from higgs.lab.product import NODE_PORT, NodeProgram, ServerProgram, client_cli
from higgs.lab.wait import wait_until as lab_wait_until

DNS_NAME = "www.example.test"


# These tests run the real higgsnode; in a tree where it has not landed yet they cannot run.
needs_node = pytest.mark.skipif(
    importlib.util.find_spec("higgs.node.agent") is None,
    reason="needs higgsnode (higgs.node.agent), which is not in this tree yet",
)


def wait_until(what: str, check: Callable[[], object], timeout: float, every: float = 0.5) -> None:
    """The lab's wait_until; a check that raises (a service still starting) means "not yet"."""
    lab_wait_until(what, check, timeout, every, tolerate=(Exception,))


class Server(ServerProgram):
    """bosonserver (started by higgs.lab.product), and what these tests read of its metrics."""

    def metrics(self) -> str:
        out = self.lab.server.run(
            ["curl", "-sS", "--noproxy", "*", "--max-time", "5", f"{self.url}/metrics"]
        )
        return out.stdout

    def admin_page(self, path: str = "/admin/") -> str:
        """A page of the operator dashboard as a logged-in browser gets it: curl logs in with
        the admin token (from a 0600 copy without its newline, never on a command line) and
        keeps the session cookie in a jar beside it."""
        token = (self.data_dir / "admin.token").read_text().strip()
        form = self.data_dir.parent / "admin-login.form"
        jar = self.data_dir.parent / "admin.cookies"
        fd = os.open(form, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        curl = ["curl", "-sS", "--noproxy", "*", "--max-time", "10", "-b", str(jar), "-c", str(jar)]
        try:
            login = ["-o", "/dev/null", "-H", f"Origin: {self.url}", "--data-urlencode",
                     f"token@{form}", f"{self.url}/admin/login"]  # fmt: skip
            self.lab.server.run([*curl, *login])
            return self.lab.server.run([*curl, "--fail", f"{self.url}{path}"]).stdout
        finally:
            form.unlink(missing_ok=True)

    def relayed_datagrams(self) -> float:
        """Datagrams the relay forwarded, summed over directions (from /metrics)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("higgs_relay_") and re.match(
                r"^higgs_relay_(forwarded_)?datagrams(_forwarded)?_total", line
            ):
                total += float(line.rsplit(" ", 1)[1])
        return total


@dataclass
class Node:
    """One higgsnode (started by higgs.lab.product) enrolled with ``server``, on ``host``
    (default: the lab's node), known by the id it came online with."""

    lab: Lab
    server: Server
    state_dir: Path
    interface: str
    endpoint: str | None = None
    host: Host | None = None
    node_id: str | None = None
    args: tuple[str, ...] = ()  # more `higgsnode start` flags (e.g. --ipv6 off)
    env: dict[str, str] | None = None  # higgsnode's whole environment (default: ours)
    program: NodeProgram = field(init=False)

    def __post_init__(self) -> None:
        self.program = NodeProgram(self.lab, self.state_dir, self.interface, self.host)

    @property
    def proc(self) -> LabProcess | None:
        return self.program.proc

    def online_ids(self) -> set[str]:
        listing = json.loads(self.server.cli("nodes", "--json"))
        items = listing["nodes"] if isinstance(listing, dict) else listing
        return {
            str(n["node_id"])
            for n in items
            if n.get("state") == "online" and n.get("connected", True)
        }

    def start(self) -> None:
        already = self.online_ids()
        key = self.server.cli("enroll", "create").split()[-1]
        flags = ["--server", self.server.url, "--enroll-key", key]
        flags += ["--listen-port", str(NODE_PORT), "--country", "DE", "--region", "Lab"]
        flags += ["--dns-upstream", self.lab.internet.ip]
        if self.endpoint:
            flags += ["--endpoint", self.endpoint]
        self.program.start(*flags, *self.args, env=self.env)
        wait_until(
            "the node to come online", lambda: bool(self.online_ids() - already), 60, every=1.0
        )
        (self.node_id,) = self.online_ids() - already

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.alive():
            proc.popen.terminate()
            proc.popen.wait(60)


@dataclass
class Client:
    lab: Lab
    host: Host
    name: str
    token: str
    state_dir: Path
    interface: str
    server_url: str
    connected: bool = False
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None  # every higgsvpn run's whole environment (default: ours)

    @property
    def resolv_conf(self) -> Path:
        # `ip netns exec` bind-mounts this file over /etc/resolv.conf in the namespace.
        return Path("/etc/netns") / self.host.ns / "resolv.conf"

    def write_config(self) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        cfg = self.state_dir / "higgsvpn.toml"
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w") as fh:
            fh.write(
                f'server_url = "{self.server_url}"\n'
                f'token = "{self.token}"\n'
                f'state_dir = "{self.state_dir}"\n'
                f'interface = "{self.interface}"\n'
                f'resolv_conf = "{self.resolv_conf}"\n'
            )
        return cfg

    def vpn(self, *args: str, check: bool = True, timeout: float = 90) -> Any:
        return client_cli(
            self.host,
            self.state_dir / "higgsvpn.toml",
            *args,
            check=check,
            timeout=timeout,
            env=self.env,
        )

    def connect(self, *args: str) -> dict[str, Any]:
        out = self.vpn("connect", "--json", *self.extra, *args)
        self.connected = True
        answer: dict[str, Any] = json.loads(out.stdout)
        return answer

    def disconnect(self) -> None:
        self.vpn("disconnect")
        self.connected = False

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.vpn("status", "--json").stdout)
        return data

    def resolve(self, name: str) -> list[str]:
        """Resolves through the system resolver (resolv.conf), as an application does."""
        out = self.host.run(["getent", "ahostsv4", name], check=False, timeout=20)
        return sorted({line.split()[0] for line in out.stdout.splitlines() if line.strip()})


@dataclass
class System:
    lab: Lab
    tmp: Path
    server: Server
    node: Node
    clients: list[Client] = field(default_factory=list)
    extra_nodes: list[Node] = field(default_factory=list)
    added: int = 0  # users ever added: a name is never reused, even after a failed setup

    def add_node(self, host: Host, tag: str) -> Node:
        """Another higgsnode, on ``host`` (e.g. the printer PC on the same home LAN)."""
        node = Node(
            self.lab, self.server, self.tmp / f"node-{tag}", self.lab.ifname(tag), host=host
        )
        self.extra_nodes.append(node)
        node.start()
        return node

    def client(self, host: Host | None = None, **kw: Any) -> Client:
        """A new user (token, interface, state dir): unique within the module's system."""
        self.added += 1
        name = f"c{self.added}"
        token = self.server.cli("client", "add", f"{name}-{self.lab.names.stem}").split()[-1]
        host = host or self.lab.client
        if not (Path("/etc/netns") / host.ns).exists():
            (Path("/etc/netns") / host.ns).mkdir(parents=True)
        resolv = Path("/etc/netns") / host.ns / "resolv.conf"
        if not resolv.exists():
            # What the client had before: its router (never used once connected).
            resolv.write_text(f"nameserver {self.lab.internet.ip}\n")
        c = Client(
            self.lab,
            host,
            name,
            token,
            self.tmp / f"client-{name}",
            self.lab.ifname(name),
            self.server.url,
            **kw,
        )
        c.write_config()
        self.clients.append(c)
        return c


def _build_system(
    lab: Lab,
    tmp: Path,
    *,
    direct: bool,
    server_env: dict[str, str] | None = None,
    node_args: tuple[str, ...] = (),
) -> System:
    """bosonserver and one higgsnode (port-forwarded when ``direct``); a failed start carries
    the processes' logs."""
    try:
        server = Server(lab, tmp / "server", env=dict(server_env or {}))
        server.start()
        endpoint = None
        if direct:
            lab.forward_udp(NODE_PORT)
            endpoint = f"{lab.home_router.addr('wan0')}:{NODE_PORT}"
        node = Node(lab, server, tmp / "node", lab.ifname("n"), endpoint, args=node_args)
        node.start()
    except Exception as exc:
        exc.add_note("process logs:\n" + lab.log_tails(40))
        raise
    return System(lab, tmp, server, node)


def _teardown_system(system: System) -> None:
    for c in system.clients:
        if c.connected:
            with contextlib.suppress(Exception):
                c.vpn("disconnect", check=False, timeout=60)
        with contextlib.suppress(Exception):
            c.vpn("cleanup", check=False, timeout=60)
        with contextlib.suppress(OSError):
            (Path("/etc/netns") / c.host.ns / "resolv.conf").unlink()
            (Path("/etc/netns") / c.host.ns).rmdir()
    for node in [*system.extra_nodes, system.node]:
        with contextlib.suppress(Exception):
            node.stop()


def home_public(lab: Lab) -> str:
    return lab.home_router.addr("wan0")


def client_public(lab: Lab) -> str:
    return lab.client_router.addr("wan0")


def check_tunnel(system: System, client: Client) -> None:
    """Ping, HTTP and DNS go through the node; DNS never leaves from the client's side."""
    lab = system.lab
    client.host.run(["ping", "-c", "2", "-W", "3", lab.internet.ip], timeout=20)
    assert lab.whoami(client.host)["ip"] == home_public(lab)
    assert client.resolve(DNS_NAME), "the name did not resolve through the tunnel"
    asked = {q.source.split("#")[0] for q in lab.wait_dns_queries(DNS_NAME, timeout=10)}
    assert asked, "the lab's DNS server saw no query"
    assert home_public(lab) in asked
    assert client_public(lab) not in asked, "DNS leaked from the client's own network"


@contextlib.contextmanager
def running_system(
    tmp: Path,
    *,
    direct: bool,
    plan: LabPlan | None = None,
    ipv6: bool = False,
    server_env: dict[str, str] | None = None,
    ipv6_without: tuple[str, ...] = (),
    node_args: tuple[str, ...] = (),
    before_start: Callable[[Lab], None] | None = None,
) -> Iterator[System]:
    """A lab with bosonserver and one higgsnode in it, torn down always, checked to leave
    nothing behind (namespaces, sockets, processes). ``server_env``: BOSON_* settings;
    ``before_start`` sees the built lab before any program runs in it (e.g. to snapshot the
    node's host)."""
    lab = Lab(plan=plan, ipv6=ipv6, ipv6_without=ipv6_without).build()
    try:
        if before_start is not None:
            before_start(lab)
        system = _build_system(lab, tmp, direct=direct, server_env=server_env, node_args=node_args)
        try:
            yield system
        finally:
            _teardown_system(system)
    finally:
        lab.teardown()
    left = lab.leftovers()
    assert not left, f"lab {lab.names.stem} left behind: {left}"


def disconnect_all(system: System) -> None:
    """After each test: no client stays connected into the next one."""
    for c in system.clients:
        if c.connected:
            c.vpn("disconnect", check=False, timeout=60)
            c.connected = False


def two_client_plan() -> LabPlan:
    """The default lab with a second client host on the client router's LAN (a bridge)."""
    base = default_plan()
    hosts = dict(base.hosts)
    hosts["client2"] = HostPlan(
        "client2",
        (("eth0", IPv4Interface("10.0.2.11/24")),),
        gateway=hosts["client"].gateway,
    )
    kept = [c for c in base.cables if (c.a, c.b) != ("client", "client_router")]
    cables = (
        *kept,
        Cable("client", "eth0", "client_router", "p-c1"),
        Cable("client2", "eth0", "client_router", "p-c2"),
    )
    bridges = (*base.bridges, Bridge("client_router", "lan0", ("p-c1", "p-c2")))
    return LabPlan(hosts=hosts, cables=cables, bridges=bridges)
