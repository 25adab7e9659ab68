"""Two real ``bosonserver serve`` instances behind HAProxy, on one PostgreSQL database and one
nats-server, all on loopback (one module-scoped deployment: each process start costs seconds).

The test process provisions through the database (as ``bosonserver`` CLI commands would) and
plays the node with the node's own link (``higgs.transport.relay_link.RelayLink``: its
reconnect and backoff are the real ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from higgs.lab.services.haproxy import Backend, argv, write_config
from tests.integration.conftest import PgCluster, _as_postgres, _psql

NATS = shutil.which("nats-server") or "/usr/sbin/nats-server"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s:\n{log.read_text()[-3000:]}")


@dataclass
class Instance:
    name: str
    api_port: int
    relay_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


@dataclass
class Deployment:
    root: Path
    database: str
    nats_port: int
    api_port: int
    relay_port: int
    instances: dict[str, Instance]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def relay(self) -> str:
        return f"ws://127.0.0.1:{self.relay_port}"

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Path:
        log = self.root / f"{name}.log"
        with log.open("ab") as out:
            self.procs[name] = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        return log

    def start_nats(self) -> None:
        cmd = [NATS, "-a", "127.0.0.1", "-p", str(self.nats_port)]
        log = self._spawn("nats", cmd)
        wait_port(self.nats_port, self.procs["nats"], log)

    def start_instance(self, name: str) -> None:
        inst = self.instances[name]
        env = dict(os.environ)
        env.update(
            {
                "BOSON_REQUIRE_KEY_PROOF": "false",
                "BOSON_CLUSTER_RECONCILE_S": "0.5",
                "BOSON_CLUSTER_BEAT_S": "0.5",
                "BOSON_INSTANCE_DEAD_AFTER_S": "2",
                "BOSON_SWEEP_INTERVAL_S": "1",
                "BOSON_RELAY_PING_INTERVAL_S": "2",
                "BOSON_RELAY_DEAD_AFTER_S": "6",
            }
        )
        cmd = [
            sys.executable, "-m", "higgs.bosonserver", "serve",
            "--data-dir", str(self.root / name),
            "--database", self.database,
            "--listen", f"127.0.0.1:{inst.api_port}",
            "--relay-listen", f"127.0.0.1:{inst.relay_port}",
            "--public-url", self.api,
            "--relay-url", self.relay,
            "--instance-relay-url", f"ws://127.0.0.1:{inst.relay_port}",
            "--bus", f"nats://127.0.0.1:{self.nats_port}",
            "--instance-id", name,
        ]  # fmt: skip
        log = self._spawn(name, cmd, env)
        inst.proc = self.procs[name]
        wait_port(inst.api_port, inst.proc, log, timeout=60)
        wait_port(inst.relay_port, inst.proc, log, timeout=10)

    def start_haproxy(self) -> None:
        backends = [
            Backend(i.name, f"127.0.0.1:{i.api_port}", f"127.0.0.1:{i.relay_port}")
            for i in self.instances.values()
        ]
        cfg = write_config(
            self.root / "haproxy.cfg",
            f"127.0.0.1:{self.api_port}",
            f"127.0.0.1:{self.relay_port}",
            backends,
        )
        log = self._spawn("haproxy", argv(cfg))
        wait_port(self.api_port, self.procs["haproxy"], log)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(30)

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted(self.root.glob("*.log"))
        )

    async def wait_healthy(self, within_s: float = 20) -> None:
        deadline = time.monotonic() + within_s
        async with httpx.AsyncClient(timeout=2) as http:
            for inst in self.instances.values():
                while True:
                    try:
                        if (await http.get(inst.api + "/healthz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{inst.name} not healthy:\n{self.log_tails()}")
                    await asyncio.sleep(0.1)


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
    dep = Deployment(
        root=root,
        database=pg_cluster.url(name),
        nats_port=free_port(),
        api_port=free_port(),
        relay_port=free_port(),
        instances={n: Instance(n, free_port(), free_port()) for n in ("a", "b")},
    )
    try:
        dep.start_nats()
        dep.start_instance("a")  # first alone: it runs the migrations
        dep.start_instance("b")
        dep.start_haproxy()
        yield dep
    except BaseException:
        print(dep.log_tails())
        raise
    finally:
        dep.stop_all()
        _psql(pg_cluster, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
