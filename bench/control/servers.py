"""The servers under test, each a real process on loopback pinned to CPU 1, started by the
harness (:mod:`higgs.lab.loopback`, :func:`higgs.lab.product.loopback_server`) as in the labs:

- bosonserver (``bosonserver serve``) on SQLite in a temporary data directory, or on
  PostgreSQL in a database of a throwaway cluster;
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
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from higgs.lab.loopback import LOOPBACK_IP, Loopback, free_port
from higgs.lab.product import loopback_server

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
# The servers import bench's modules too (the reference app) from this checkout.
_ENV = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def server_unavailable() -> str | None:
    if importlib.util.find_spec("higgs.server.app") is None:
        return "bosonserver's API is not in this build (branch server not merged into main)"
    return None


@dataclass
class RunningServer:
    url: str
    pid: int
    workdir: Path
    database: str | None = None

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


@contextlib.contextmanager
def _workdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def reference_server() -> Iterator[RunningServer]:
    with _workdir("higgs-bench-ref-") as workdir, Loopback(workdir, cpus=str(SERVER_CPU)) as lo:
        port = free_port()
        argv = [sys.executable, "-m", "bench.control.reference_app", "--port", str(port)]
        proc = lo.host.popen(argv, name="reference", env={**os.environ, **_ENV})
        proc.wait_listening(port, timeout=60)
        yield RunningServer(f"http://{LOOPBACK_IP}:{port}", proc.pid, workdir)


@contextlib.contextmanager
def nats_server() -> Iterator[str]:
    """A ``nats-server`` on loopback (Debian's), for the scale-out rows; its URL."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(binary).exists():
        raise RuntimeError("nats-server is not installed (scripts/setup.sh installs it)")
    with _workdir("higgs-bench-nats-") as workdir, Loopback(workdir) as lo:
        port = free_port()
        proc = lo.host.popen([binary, "-a", LOOPBACK_IP, "-p", str(port)], name="nats")
        proc.wait_listening(port, timeout=30)
        yield f"nats://{LOOPBACK_IP}:{port}"


@contextlib.contextmanager
def bosonserver(
    database: str | None = None, bus: str | None = None, instance_id: str | None = None
) -> Iterator[RunningServer]:
    """A real ``bosonserver serve`` on loopback; SQLite unless ``database`` is given; one
    instance of a scale-out deployment when ``bus`` is given (docs/scaleout.md)."""
    env = {
        "BOSON_RATE_LIMIT_PER_S": "1000000000",
        "BOSON_RATE_LIMIT_BURST": "1000000000",
        **_ENV,
    }
    with (
        _workdir("higgs-bench-boson-") as workdir,
        loopback_server(
            workdir,
            env=env,
            database=database,
            bus=bus,
            instance_id=instance_id,
            cpus=str(SERVER_CPU),
        ) as program,
    ):
        assert program.proc is not None
        yield RunningServer(program.url, program.proc.pid, workdir, database)


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
