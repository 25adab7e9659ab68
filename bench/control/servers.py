"""The servers under test, each a real process on loopback pinned to CPU 1.

- bosonserver (``python -m higgs.server.cli serve``) on SQLite in a temporary data directory,
  or on PostgreSQL in a database of a throwaway cluster;
- the reference FastAPI app (:mod:`bench.control.reference_app`).

The API's rate limits are raised through the server's own settings (``BOSON_RATE_LIMIT_*``):
every simulated node and client comes from 127.0.0.1, and the benchmark measures the
server's capacity, not its limiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SERVER_CPU",
    "RunningServer",
    "bosonserver",
    "nats_server",
    "postgres_cluster",
    "reference_server",
    "server_unavailable",
]

SERVER_CPU = 1
_PY = sys.executable


def server_unavailable() -> str | None:
    if importlib.util.find_spec("higgs.server.app") is None:
        return "bosonserver's API is not in this build (branch server not merged into main)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {log.read_text()[-800:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {timeout} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class RunningServer:
    url: str
    pid: int
    workdir: Path
    database: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def provision(self, uses: int, client_name: str) -> tuple[str, str]:
        """An enrollment key for ``uses`` nodes and a client token, written straight into the
        server's database through its own services (what ``bosonserver enroll create`` and
        ``client add`` do, without paying a CLI start-up, seconds on a busy machine, per call).
        """
        from higgs.server.services.identity import IdentityService
        from higgs.server.store.db import Database, database_url

        async def go() -> tuple[str, str]:
            db = Database(database_url(self.database, self.workdir / "data"))
            try:
                ids = IdentityService(db)
                return await ids.create_enrollment_key(uses), await ids.add_client(client_name)
            finally:
                await db.dispose()

        return asyncio.run(go())

    def cli(self, *args: str) -> str:
        """``bosonserver ARGS`` against this server's database (no token needed)."""
        db = ["--database", self.database] if self.database else []
        out = subprocess.run(
            [_PY, "-m", "higgs.server.cli", *args, "--data-dir", str(self.workdir / "data"), *db],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"bosonserver {' '.join(args)}: {out.stderr.strip()[-400:]}")
        return out.stdout.strip()


@contextlib.contextmanager
def _process(
    argv: list[str], port: int, env: dict[str, str], workdir: Path
) -> Iterator[RunningServer]:
    log = workdir / "server.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                ["taskset", "-c", str(SERVER_CPU), *argv],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                cwd=workdir,
                start_new_session=True,
            )
        _wait_port(port, proc, log, timeout=60)
        yield RunningServer(f"http://127.0.0.1:{port}", proc.pid, workdir)
    finally:
        if proc is not None:
            _stop(proc)


@contextlib.contextmanager
def reference_server() -> Iterator[RunningServer]:
    port = _free_port()
    argv = [_PY, "-m", "bench.control.reference_app", "--port", str(port)]
    env = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    workdir = Path(tempfile.mkdtemp(prefix="higgs-bench-ref-"))
    try:
        with _process(argv, port, env, workdir) as srv:
            yield srv
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def nats_server() -> Iterator[str]:
    """A ``nats-server`` on loopback (Debian's), for the scale-out rows; its URL."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(binary).exists():
        raise RuntimeError("nats-server is not installed (scripts/setup.sh installs it)")
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="higgs-bench-nats-"))
    log = workdir / "nats.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_port(port, proc, log, timeout=30)
        yield f"nats://127.0.0.1:{port}"
    finally:
        _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def bosonserver(
    database: str | None = None, bus: str | None = None, instance_id: str | None = None
) -> Iterator[RunningServer]:
    """A real ``bosonserver serve`` on loopback; SQLite unless ``database`` is given; one
    instance of a scale-out deployment when ``bus`` is given (docs/scaleout.md)."""
    port, relay_port = _free_port(), _free_port()
    env = {
        "BOSON_RATE_LIMIT_PER_S": "1000000000",
        "BOSON_RATE_LIMIT_BURST": "1000000000",
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
    }
    data = Path(tempfile.mkdtemp(prefix="higgs-bench-boson-"))
    argv = [
        _PY,
        "-m",
        "higgs.server.cli",
        "serve",
        "--data-dir",
        str(data / "data"),
        "--listen",
        f"127.0.0.1:{port}",
        "--relay-listen",
        f"127.0.0.1:{relay_port}",
        "--relay-url",
        f"ws://127.0.0.1:{relay_port}",
    ]
    if database:
        argv += ["--database", database]
    if bus:
        argv += ["--bus", bus, "--instance-id", instance_id or f"bench-{port}"]
        argv += ["--instance-relay-url", f"ws://127.0.0.1:{relay_port}"]
    try:
        with _process(argv, port, env, data) as srv:
            srv.database = database
            yield srv
    finally:
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[Any]:
    """The server's integration-test PostgreSQL cluster (tests/integration/conftest.py), reused
    as is: a throwaway cluster on 127.0.0.1, fsync off, removed afterwards.

    Yields a factory ``new_database() -> url``. Raises RuntimeError naming what is missing.
    """
    try:
        conftest = importlib.import_module("tests.integration.conftest")
    except ImportError as exc:
        raise RuntimeError(
            f"the server's PostgreSQL test helper is not importable: {exc}"
        ) from None
    fixture = getattr(conftest, "pg_cluster", None)
    if fixture is None:
        raise RuntimeError("tests/integration/conftest.py has no pg_cluster helper (server branch)")
    # pytest wraps fixtures; the generator underneath is the plain helper.
    unwrap = getattr(fixture, "_get_wrapped_function", None)
    gen_fn = unwrap() if unwrap is not None else getattr(fixture, "__wrapped__", fixture)
    gen = gen_fn()
    try:
        cluster = next(gen)
    except (
        BaseException
    ) as exc:  # pytest.skip raises an exception outside BaseException's Exception
        raise RuntimeError(f"PostgreSQL cluster did not start: {exc}") from None
    counter = [0]

    def new_database() -> str:
        counter[0] += 1
        name = f"bench_{os.getpid()}_{counter[0]}"
        conftest._psql(cluster, f'CREATE DATABASE "{name}"')
        url: str = cluster.url(name)
        return url

    try:
        yield new_database
    finally:
        with contextlib.suppress(StopIteration):
            next(gen)
