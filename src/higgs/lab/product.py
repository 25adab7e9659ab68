"""The real programs in the lab: bosonserver in the server's namespace, higgsnode in the
node's (UDP port-forwarded on the home router), higgsvpn on a client host, and stock WireGuard
clients configured from the server's route answer.

This is the one place that starts the product in a lab -- tests, the demo and the benchmarks
all come here: :class:`ServerProgram`, :class:`NodeProgram` and :func:`client_cli` hold the
programs' command lines (``python -m higgs.bosonserver`` / ``higgs.server.cli`` /
``higgs.node.cli`` / ``higgs.client.cli``), :class:`Product` composes them into a working
service. :func:`loopback_program` and :func:`loopback_server` put bosonserver on 127.0.0.1
without a lab (:mod:`higgs.lab.loopback`), and :func:`run_program` runs any of the three in the
foreground there, for the tests and benchmarks that need no namespaces. The lab speaks to them
the way a user does -- their command lines and the REST API of
docs/protocol.md, over the lab's own network with curl -- so it imports none of them.

    with Lab() as lab:
        product = Product(lab)
        product.start_server()
        product.start_node(config='[shaping]\\ntotal_down_mbit = 20\\n')
        client = product.connect_stock(lab.client)     # route + wireguard-go + handshake
        assert lab.whoami(lab.client)["ip"] == lab.home_router.ip
        product.stop_node()
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CommandError, LabError
from .host import Host
from .lab import Lab
from .loopback import LOOPBACK_IP, Loopback, free_port
from .procs import LabProcess
from .stock import StockClient
from .wireguard import new_keypair

__all__ = [
    "API_PORT",
    "NODE_PORT",
    "PROGRAMS",
    "RELAY_PORT",
    "NodeProgram",
    "Product",
    "RelayProgram",
    "ServerProgram",
    "client_cli",
    "loopback_program",
    "loopback_server",
    "run_program",
    "serving_stock_clients",
]

API_PORT = 8080
RELAY_PORT = 8081
NODE_PORT = 51820


# The programs a user runs, and the module each is (the entry points of pyproject.toml).
PROGRAMS: dict[str, str] = {
    "bosonserver": "higgs.bosonserver",
    "higgsnode": "higgs.node.cli",
    "higgsvpn": "higgs.client.cli",
}


def _py(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def run_program(
    program: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``<program> <args>`` (``bosonserver``, ``higgsnode`` or ``higgsvpn``) in the foreground
    in this process's namespace, as a user types it; never raises on its exit code. ``env``:
    its whole environment (default ours)."""
    try:
        module = PROGRAMS[program]
    except KeyError:
        raise LabError(f"no program {program!r} (one of {', '.join(PROGRAMS)})") from None
    return subprocess.run(
        _py(module, *args),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=None if env is None else dict(env),
        input=input,
    )


@dataclass
class ServerProgram:
    """bosonserver with its data directory in the lab's server namespace (or on a
    :class:`Loopback`): ``serve`` in the background (the composition root, the UDP relay
    beside it), the operator CLI in the foreground. ``env`` adds BOSON_* settings (e.g. a short
    session TTL) to the environment of both, ``database`` a ``--database`` URL to both;
    ``command`` runs another bosonserver (e.g. another checkout's interpreter with ``-m
    higgs.bosonserver``) for both instead of this interpreter's modules."""

    lab: Lab | Loopback
    data_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    proc: LabProcess | None = None
    command: Sequence[str] = ()
    # Where ``serve`` listens (default: the server's address, the lab's ports); an instance
    # behind a balancer listens elsewhere while ``url`` stays the balancer's (docs/scaleout.md).
    listen_host: str | None = None
    api_port: int = API_PORT
    relay_port: int = RELAY_PORT
    database: str | None = None
    # The URLs put into answers (default: the server's address, the lab's ports).
    public_url: str | None = None
    relay_url: str | None = None

    def _argv(self, module: str, *args: str) -> list[str]:
        return [*self.command, *args] if self.command else _py(module, *args)

    @property
    def host(self) -> Host:
        return self.lab.server

    @property
    def url(self) -> str:
        return self.public_url or f"http://{self.host.ip}:{API_PORT}"

    @property
    def relay(self) -> str:
        """The relay's base URL in answers (``ws://…``)."""
        return self.relay_url or f"ws://{self.host.ip}:{RELAY_PORT}"

    @property
    def instance_relay_url(self) -> str:
        """This instance's own relay (``--instance-relay-url``: where the other instances and
        a balancer reach the links it holds)."""
        return f"ws://{self.listen_host or self.host.ip}:{self.relay_port}"

    def _db(self) -> list[str]:
        return ["--database", self.database] if self.database else []

    def cli(self, *args: str, timeout: float = 60) -> str:
        """One operator command (``bosonserver client add …``) with ``env`` as ``serve`` has
        it (the same database, the same clock); its stdout, stripped."""
        argv = self._argv("higgs.server.cli", *args, "--data-dir", str(self.data_dir), *self._db())
        env = {**os.environ, **self.env}
        return self.host.run(argv, timeout=timeout, env=env).stdout.strip()

    def start(self, *, timeout: float = 60, args: Sequence[str] = ()) -> LabProcess:
        """``bosonserver serve`` on the lab's API and relay ports; returns once both listen.
        ``args``: more ``serve`` options."""
        self.launch(args=args)
        return self.wait_serving(timeout=timeout)

    def launch(self, *, args: Sequence[str] = ()) -> LabProcess:
        """``bosonserver serve`` in the background, not waiting for it (start several at
        once: each start is seconds of imports on a busy machine)."""
        bind = self.listen_host or self.host.ip
        self.proc = self.host.popen(
            self._argv(
                "higgs.bosonserver", "serve",
                "--data-dir", str(self.data_dir), *self._db(),
                "--listen", f"{bind}:{self.api_port}",
                "--relay-listen", f"{bind}:{self.relay_port}",
                "--public-url", self.url,
                "--relay-url", self.relay,
                *args,
            ),
            name=self.name,
            env={**os.environ, **self.env},
        )  # fmt: skip
        return self.proc

    @property
    def name(self) -> str:
        """The process's name (and its log's, on a loopback host): the data directory's."""
        return "bosonserver" if isinstance(self.lab, Lab) else self.data_dir.name

    def wait_serving(self, *, timeout: float = 60) -> LabProcess:
        """Returns once the launched ``serve`` listens on its API and relay ports."""
        if self.proc is None:
            raise LabError("no bosonserver was started")
        self.proc.wait_listening(self.api_port, timeout=timeout)
        self.proc.wait_listening(self.relay_port, timeout=timeout)
        return self.proc

    def kill(self, sig: int = signal.SIGKILL, *, timeout: float = 30) -> None:
        """SIGKILL, as a crash would: nothing of the server's own shutdown runs (or ``sig``,
        e.g. SIGTERM, the server's shutdown); returns once it exited."""
        if self.proc is None:
            raise LabError("no bosonserver was started")
        if self.proc.alive():
            self.proc.popen.send_signal(sig)
        self.proc.popen.wait(timeout)


@dataclass
class NodeProgram:
    """higgsnode with its state directory and WireGuard interface on ``host`` (the lab's node
    unless given): ``start`` in the background, the other commands in the foreground."""

    lab: Lab
    state_dir: Path
    interface: str
    host: Host | None = None
    proc: LabProcess | None = None

    @property
    def on(self) -> Host:
        return self.host or self.lab.node

    def cli(
        self, *args: str, check: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``higgsnode <args> --state-dir … --interface …`` (``status``, ``stop``, ``cleanup``)."""
        argv = _py("higgs.node.cli", *args, "--state-dir", str(self.state_dir))
        argv += ["--interface", self.interface]
        return self.on.run(argv, check=check, timeout=timeout)

    def start(self, *flags: str, env: Mapping[str, str] | None = None) -> LabProcess:
        """``higgsnode start`` with ``flags`` (server, enrollment key, endpoint, …)."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        argv = _py("higgs.node.cli", "start", "--state-dir", str(self.state_dir))
        argv += ["--interface", self.interface, *flags]
        self.proc = self.on.popen(argv, name="higgsnode", env=env)
        return self.proc


@dataclass
class RelayProgram:
    """``bosonserver relay``: the UDP relay as its own process on a server's data directory
    (its database), on ``host`` (the lab's server unless given), in the background."""

    lab: Lab | Loopback
    data_dir: Path
    host: Host | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    proc: LabProcess | None = None

    @property
    def on(self) -> Host:
        return self.host or self.lab.server

    def start(self, *args: str) -> LabProcess:
        """``bosonserver relay --data-dir … <args>`` (``--relay-ip``, ``--relay-ports``, …)."""
        argv = _py("higgs.bosonserver", "relay", "--data-dir", str(self.data_dir), *args)
        self.proc = self.on.popen(argv, name="udp-relay", env={**os.environ, **self.env})
        return self.proc


def client_cli(
    host: Host,
    config: Path,
    *args: str,
    check: bool = True,
    timeout: float = 90,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``higgsvpn <command> --config <config> <rest…>`` on ``host`` (the command first: the
    CLI's sub-commands take their options after it; ``env``: its whole environment, which the
    daemon ``connect`` starts inherits)."""
    command, rest = args[0], list(args[1:])
    argv = _py("higgs.client.cli", command, "--config", str(config), *rest)
    return host.run(argv, check=check, timeout=timeout, env=env)


class Product:
    """bosonserver + higgsnode (+ stock clients) in one lab; the lab's teardown stops them."""

    def __init__(self, lab: Lab) -> None:
        if lab.workdir is None:
            raise LabError("build the lab first")
        self.lab = lab
        self.workdir = lab.workdir
        self.server = ServerProgram(lab, self.workdir / "bosonserver")
        self.node = NodeProgram(lab, self.workdir / "higgsnode", lab.ifname("hn"))
        self.node_state_dir = self.node.state_dir
        self.node_if = self.node.interface
        self.clients: list[StockClient] = []
        self._tokens: dict[str, str] = {}
        self._enroll_key: str | None = None

    # -- bosonserver -----------------------------------------------------------------------

    @property
    def server_url(self) -> str:
        return self.server.url

    @property
    def server_proc(self) -> LabProcess | None:
        return self.server.proc

    def server_cli(self, *args: str, timeout: float = 60) -> str:
        return self.server.cli(*args, timeout=timeout)

    def start_server(self, *, timeout: float = 60, args: Sequence[str] = ()) -> LabProcess:
        """``args``: more ``serve`` options (e.g. ``--udp-relay-address``)."""
        return self.server.start(timeout=timeout, args=args)

    def add_client(self, name: str) -> str:
        """A client account; returns its token (``hgc_…``)."""
        token = self.server_cli("client", "add", f"{name}-{self.lab.names.stem}").split()[-1]
        self._tokens.setdefault(name, token)
        return token

    def provision(self, *client_names: str) -> None:
        """Create the node's enrollment key and the named client accounts at once: each
        bosonserver CLI call spends seconds starting the interpreter, in parallel they
        overlap."""
        names = client_names or ("client",)
        with ThreadPoolExecutor(len(names) + 1) as pool:
            enroll = pool.submit(self.server_cli, "enroll", "create")
            for future in [pool.submit(self.add_client, n) for n in names]:
                future.result()
            self._enroll_key = enroll.result().split()[-1]

    def token(self, name: str = "client") -> str:
        """The token of client account ``name``, created on first use (each CLI call costs
        seconds of interpreter start-up, so tests share accounts where they can)."""
        return self._tokens.get(name) or self.add_client(name)

    def api(
        self,
        host: Host,
        method: str,
        path: str,
        token: str,
        body: dict[str, Any] | None = None,
        *,
        timeout: float = 15,
    ) -> Any:
        """One REST call from ``host`` (curl in its namespace); the decoded JSON answer.
        A 4xx/5xx raises LabError with the server's JSON error."""
        argv = [
            "curl", "-sS", "--noproxy", "*", "--max-time", str(timeout), "-X", method,
            "-H", f"Authorization: Bearer {token}", "-w", "\n%{http_code}",
        ]  # fmt: skip
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
        argv.append(f"{self.server_url}{path}")
        out = host.run(argv, input=json.dumps(body) if body is not None else None).stdout
        text, _, code = out.rpartition("\n")
        if not code.isdigit() or int(code) >= 400:
            raise LabError(f"{method} {path} from {host.role}: HTTP {code}: {text[:500]}")
        return json.loads(text) if text.strip() else None

    # -- higgsnode ---------------------------------------------------------------------------

    @property
    def node_proc(self) -> LabProcess | None:
        return self.node.proc

    def node_cli(self, *args: str, check: bool = False, timeout: float = 60) -> Any:
        return self.node.cli(*args, check=check, timeout=timeout)

    def start_node(
        self,
        *,
        config: str = "",
        flags: Sequence[str] = (),
        direct: bool = True,
        dns_upstream: str | None = None,
        enroll: bool = True,
    ) -> LabProcess:
        """higgsnode in the node's namespace, enrolled with a fresh key. ``config`` is TOML
        (e.g. a ``[shaping]`` table); the DNS upstream is the lab's DNS server unless given
        (never the host's resolv.conf). With ``direct`` the home router forwards the UDP port
        and the node announces the router's public address as its endpoint. ``enroll=False``
        restarts a node that registered before with the identity in its state directory (no
        key: a ``bosonserver enroll create`` costs seconds of interpreter start-up)."""
        argv = ["--server", self.server_url]
        if enroll:
            key = self._enroll_key or self.server_cli("enroll", "create").split()[-1]
            self._enroll_key = None  # one registration per key
            argv += ["--enroll-key", key]
        argv += [
            "--listen-port", str(NODE_PORT), "--country", "DE", "--region", "Lab",
            "--dns-upstream", dns_upstream or self.lab.internet.ip,
        ]  # fmt: skip
        if config:
            path = self.workdir / "higgsnode.toml"
            path.write_text(config)
            argv += ["--config", str(path)]
        if direct:
            self.lab.forward_udp(NODE_PORT)
            argv += ["--endpoint", f"{self.lab.home_router.ip}:{NODE_PORT}"]
        argv += list(flags)
        return self.node.start(*argv)

    def wait_node_online(self, token: str | None = None, *, timeout: float = 60) -> dict[str, Any]:
        """Wait until a client (``token``, default :meth:`token`) sees an online node; returns
        its summary."""
        token = token or self.token()
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            if self.node_proc is not None and not self.node_proc.alive():
                raise LabError(f"higgsnode exited:\n{self.node_proc.log_text()[-3000:]}")
            try:
                nodes = self.api(self.lab.client, "GET", "/v1/nodes", token)["nodes"]
                online = [n for n in nodes if n.get("state") == "online"]
                if online:
                    return dict(online[0])
                last = json.dumps(nodes)
            except (LabError, CommandError) as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise LabError(f"no online node after {timeout} s (last: {last[:300]})")
            time.sleep(0.5)

    def stop_node(self, *, timeout: float = 60) -> int:
        """SIGTERM (what systemd sends); wait for higgsnode to undo its changes and exit.
        Returns its exit code."""
        proc = self.node_proc
        if proc is None:
            raise LabError("no higgsnode was started")
        if proc.alive():
            proc.popen.send_signal(signal.SIGTERM)
        try:
            return proc.popen.wait(timeout)
        except Exception as exc:
            raise LabError(f"higgsnode did not exit within {timeout} s after SIGTERM") from exc

    def kill_node(self, *, timeout: float = 30) -> None:
        """SIGKILL, as a crash would: the node undoes nothing; returns once it exited."""
        proc = self.node_proc
        if proc is None:
            raise LabError("no higgsnode was started")
        if proc.alive():
            proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(timeout)

    # -- clients -----------------------------------------------------------------------------

    def route(
        self, host: Host, token: str, public_key: str, *, mode: str = "direct"
    ) -> dict[str, Any]:
        answer: dict[str, Any] = self.api(
            host, "POST", "/v1/routes", token, {"client_public_key": public_key, "mode": mode}
        )
        return answer

    def connect_stock(
        self, host: Host, *, name: str | None = None, token: str | None = None
    ) -> StockClient:
        """A route in direct mode for client account ``name`` (default: named after the
        host) or ``token``, a stock WireGuard client from it, and the first handshake."""
        token = token or self.token(name or host.role)
        keys = new_keypair()
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = self.route(host, token, keys.public)
                break
            except LabError:
                # The node may not have announced its endpoint yet (direct mode).
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        client = StockClient(self.lab, host, answer, keys)
        self.clients.append(client)
        client.up()
        client.wait_handshake()
        return client


def loopback_program(
    loopback: Loopback,
    data_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    database: str | None = None,
    public_url: str | None = None,
    relay_url: str | None = None,
) -> ServerProgram:
    """bosonserver on 127.0.0.1 of ``loopback``, on free ports (not started); its URLs its own
    unless given (an instance behind a balancer: the balancer's)."""
    api, relay = free_port(), free_port()
    return ServerProgram(
        loopback,
        data_dir,
        env=dict(env or {}),
        listen_host=LOOPBACK_IP,
        api_port=api,
        relay_port=relay,
        database=database,
        public_url=public_url or f"http://{LOOPBACK_IP}:{api}",
        relay_url=relay_url or f"ws://{LOOPBACK_IP}:{relay}",
    )


@contextlib.contextmanager
def loopback_server(
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    database: str | None = None,
    bus: str | None = None,
    instance_id: str | None = None,
    args: Sequence[str] = (),
    cpus: str | None = None,
    timeout: float = 60,
) -> Iterator[ServerProgram]:
    """``bosonserver serve`` on 127.0.0.1 (free ports; data in ``workdir/data``, its log in
    ``workdir``), started and listening; stopped afterwards. With ``bus`` (``nats://…``) one
    instance of a scale-out deployment (docs/scaleout.md), named ``instance_id``; ``args``: more
    ``serve`` options; ``cpus``: pinned there."""
    with Loopback(workdir, cpus=cpus) as loopback:
        program = loopback_program(loopback, workdir / "data", env=env, database=database)
        more = list(args)
        if bus is not None:
            more += ["--bus", bus, "--instance-id", instance_id or f"lo-{program.api_port}"]
            more += ["--instance-relay-url", program.instance_relay_url]
        program.start(timeout=timeout, args=more)
        yield program


@contextlib.contextmanager
def serving_stock_clients(
    lab: Lab, hosts: Sequence[Host], *, config: str = ""
) -> Iterator[tuple[Product, list[StockClient]]]:
    """bosonserver and higgsnode (with ``config``) in ``lab``, and a stock WireGuard client on
    each of ``hosts`` (one account per host, named after it); afterwards the clients go down
    and the node stops. A failed start carries the processes' logs."""
    product = Product(lab)
    clients: list[StockClient] = []
    try:
        product.start_server()
        product.provision(*(h.role for h in hosts))
        product.start_node(config=config)
        product.wait_node_online()
        clients.extend(product.connect_stock(h) for h in hosts)
    except Exception as exc:
        exc.add_note("process logs:\n" + lab.log_tails(40))
        raise
    try:
        yield product, clients
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                client.down()
        product.stop_node()
