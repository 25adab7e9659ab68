"""Two real ``bosonserver serve`` instances behind HAProxy, on one PostgreSQL database and one
nats-server, all on loopback (one module-scoped deployment: each process start costs seconds),
started by the harness (:mod:`higgs.lab.loopback`, :func:`higgs.lab.product.loopback_program`).

The test process provisions through the database (as ``bosonserver`` CLI commands would) and
plays the node with the node's own link (``higgs.transport.relay_link.RelayLink``: its
reconnect and backoff are the real ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shlex
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from higgs.lab.loopback import LOOPBACK_IP, Loopback, free_port
from higgs.lab.procs import LabProcess
from higgs.lab.product import RelayProgram, ServerProgram, loopback_program
from higgs.lab.services.haproxy import Backend, argv, write_config
from higgs.lab.wait import wait_until
from higgs.server.config import ServerSettings
from higgs.server.store.db import Database
from higgs.server.store.open import open_database
from tests.integration.conftest import PgCluster, _as_postgres, _psql

NATS = shutil.which("nats-server") or "/usr/sbin/nats-server"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

# Short cluster timers: a lost instance or link shows within seconds.
INSTANCE_ENV = {
    "BOSON_REQUIRE_KEY_PROOF": "false",
    "BOSON_CLUSTER_RECONCILE_S": "0.5",
    "BOSON_CLUSTER_BEAT_S": "0.5",
    "BOSON_INSTANCE_DEAD_AFTER_S": "2",
    "BOSON_SWEEP_INTERVAL_S": "1",
    "BOSON_RELAY_PING_INTERVAL_S": "2",
    "BOSON_RELAY_DEAD_AFTER_S": "6",
    # Relay hosts (test_relay_host_hub.py): a killed one is down after 3 s, its sessions
    # moved within a second of that.
    "BOSON_RELAY_HOST_DEAD_AFTER_S": "3",
    "BOSON_RELAY_FAILOVER_CHECK_S": "1",
}


@dataclass
class RelayHost:
    """A ``bosonserver relay`` of the deployment serving its WebSocket hub on loopback."""

    ip: str  # its relay address (a 127.0.0.0/8 address of its own: the registry's key)
    ws_port: int
    proc: LabProcess

    @property
    def ws_url(self) -> str:
        return f"ws://{LOOPBACK_IP}:{self.ws_port}"


@dataclass
class Instance:
    name: str
    program: ServerProgram

    @property
    def api_port(self) -> int:
        return self.program.api_port

    @property
    def relay_port(self) -> int:
        return self.program.relay_port

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.program.proc.popen if self.program.proc is not None else None

    @property
    def api(self) -> str:
        return f"http://{LOOPBACK_IP}:{self.api_port}"


@dataclass
class Deployment:
    root: Path
    database: str
    loopback: Loopback
    nats_port: int
    api_port: int
    relay_port: int
    instances: dict[str, Instance] = field(default_factory=dict)
    procs: dict[str, LabProcess] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return f"http://{LOOPBACK_IP}:{self.api_port}"

    @property
    def relay(self) -> str:
        return f"ws://{LOOPBACK_IP}:{self.relay_port}"

    @property
    def bus(self) -> str:
        return f"nats://{LOOPBACK_IP}:{self.nats_port}"

    def add_instance(self, name: str) -> Instance:
        """An instance behind the balancer (not started): its data in ``root/<name>``, its
        answers naming the balancer."""
        program = loopback_program(
            self.loopback,
            self.root / name,
            env=INSTANCE_ENV,
            database=self.database,
            public_url=self.api,
            relay_url=self.relay,
        )
        self.instances[name] = Instance(name, program)
        return self.instances[name]

    def start_nats(self) -> None:
        cmd = [NATS, "-a", LOOPBACK_IP, "-p", str(self.nats_port)]
        self.procs["nats"] = self.loopback.host.popen(cmd, name="nats")
        self.procs["nats"].wait_listening(self.nats_port, timeout=30)

    def start_instances(self, *names: str) -> None:
        """Started together (each start is seconds of imports on a busy machine); the schema
        is migrated first, by :meth:`migrate`, so that no two instances race to do it."""
        for name in names:
            program = self.instances[name].program
            args = ["--bus", self.bus, "--instance-id", name]
            self.procs[name] = program.launch(
                args=[*args, "--instance-relay-url", program.instance_relay_url]
            )
        for name in names:
            self.instances[name].program.wait_serving(timeout=90)

    def start_relay_host(self, ip: str, ports: str) -> RelayHost:
        """``bosonserver relay`` on the deployment's database, userspace forwarding, its RTT
        probe on any free port and its WebSocket hub on a free port of 127.0.0.1."""
        ws_port = free_port()
        data = self.root / f"relay-{ip}"
        data.mkdir(exist_ok=True)
        program = RelayProgram(self.loopback, data, host=self.loopback.host, env=INSTANCE_ENV)
        proc = program.start(
            "--database", self.database, "--relay-ip", ip, "--relay-ports", ports,
            "--userspace", "--relay-probe-port", "0", "--relay-state-dir", str(data / "state"),
            "--relay-instance", ip.replace(".", "_"),
            "--relay-ws-listen", f"{LOOPBACK_IP}:{ws_port}",
            "--relay-ws-url", f"ws://{LOOPBACK_IP}:{ws_port}",
        )  # fmt: skip
        proc.wait_listening(ws_port, timeout=60)
        return RelayHost(ip, ws_port, proc)

    def migrate(self) -> None:
        async def go() -> None:
            settings = ServerSettings(database=self.database, data_dir=self.root / "migrate")
            db = await open_database(settings, auto_migrate=True)
            await db.dispose()

        asyncio.run(go())

    def start_haproxy(self) -> None:
        backends = [
            Backend(i.name, f"{LOOPBACK_IP}:{i.api_port}", f"{LOOPBACK_IP}:{i.relay_port}")
            for i in self.instances.values()
        ]
        cfg = write_config(
            self.root / "haproxy.cfg",
            f"{LOOPBACK_IP}:{self.api_port}",
            f"{LOOPBACK_IP}:{self.relay_port}",
            backends,
        )
        self.procs["haproxy"] = self.loopback.host.popen(argv(cfg), name="haproxy")
        self.procs["haproxy"].wait_listening(self.api_port, timeout=30)
        # Until its checks pass HAProxy answers 503: the tests start when both instances
        # answer through it (round robin: a run of good answers reaches each).
        good = [0]

        def healthy_run() -> bool:
            try:
                ok = httpx.get(self.api + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                ok = False
            good[0] = good[0] + 1 if ok else 0
            return good[0] >= 4

        wait_until("a healthy instance behind HAProxy", healthy_run, timeout=30, every=0.1)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.alive():
            proc.popen.send_signal(sig)
            proc.popen.wait(30)

    def log_tails(self) -> str:
        return self.loopback.log_tails()


class PgOutage:
    """Stops the test cluster (fast shutdown: connections are cut) and starts it again on the
    same port with the same options (read from its ``postmaster.opts``)."""

    def __init__(self, cluster: PgCluster) -> None:
        self.cluster = cluster
        out = subprocess.run(
            [str(cluster.bindir / "psql"), "-h", cluster.host, "-p", str(cluster.port),
             "-U", cluster.user, "-d", "postgres", "-Atc", "SHOW data_directory"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        self.data = Path(out.stdout.strip())
        opts = shlex.split((self.data / "postmaster.opts").read_text())
        # The first word is the postgres binary; "-D dir" is given to pg_ctl itself.
        args = opts[1:]
        if "-D" in args:
            i = args.index("-D")
            del args[i : i + 2]
        self.opts = shlex.join(args)
        self.log = self.data.parent / "log"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres([str(self.cluster.bindir / "pg_ctl"), "-D", str(self.data), *args]),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "-w", "stop")

    def start(self) -> None:
        self._pg_ctl("-o", self.opts, "-l", str(self.log), "-w", "-t", "60", "start")


@pytest.fixture(scope="module")
def pg_outage(pg_cluster: PgCluster) -> Iterator[PgOutage]:
    outage = PgOutage(pg_cluster)
    yield outage
    # Never leave the session's shared cluster stopped for the tests that follow.
    with contextlib.suppress(subprocess.CalledProcessError):
        outage.start()


@pytest.fixture(scope="module")
def deployment(
    pg_cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    for tool in (NATS, HAPROXY):
        if not Path(tool).exists():
            pytest.skip(f"{tool} is not installed (scripts/setup.sh installs it)")
    name = "t_" + secrets.token_hex(6)
    _psql(pg_cluster, f'CREATE DATABASE "{name}"')
    root = tmp_path_factory.mktemp("scaleout")
    try:
        with Loopback(root) as loopback:
            dep = Deployment(
                root=root,
                database=pg_cluster.url(name),
                loopback=loopback,
                nats_port=free_port(),
                api_port=free_port(),
                relay_port=free_port(),
            )
            for instance in ("a", "b"):
                dep.add_instance(instance)
            try:
                dep.start_nats()
                dep.migrate()
                dep.start_instances("a", "b")
                dep.start_haproxy()
                yield dep
            except BaseException:
                print(dep.log_tails())
                raise
    finally:
        _psql(pg_cluster, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def db(
    deployment: Deployment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Database]:
    settings = ServerSettings(database=deployment.database, data_dir=tmp_path_factory.mktemp("cli"))
    database = await open_database(settings, auto_migrate=False)
    yield database
    await database.dispose()
