"""Integration fixtures: a throwaway PostgreSQL cluster started by the test run.

The cluster lives in a temporary directory owned by the ``postgres`` user, listens on
127.0.0.1 with a random free port (and a private unix socket directory), runs with fsync off,
and is stopped and deleted at the end of the session, whatever happened. Each test that asks
for ``postgres_url`` gets a database of its own in it.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BINDIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


@dataclass(frozen=True)
class PgCluster:
    host: str
    port: int
    user: str
    bindir: Path

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    if not PG_BINDIRS:
        pytest.skip("PostgreSQL is not installed (apt install postgresql)")
    bindir = PG_BINDIRS[0]
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("no 'postgres' user to run the test cluster as")
    root = Path(tempfile.mkdtemp(prefix="higgs-pg-"))
    data, sockdir, logfile = root / "data", root / "sock", root / "log"
    sockdir.mkdir()
    if os.geteuid() == 0:
        for path in (root, sockdir):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    port = _free_port()
    started = False
    # `timeout`/CI send SIGTERM; turn it into an exception so that the cluster is still
    # stopped and deleted below (Python's default SIGTERM action skips `finally`).
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _terminate)
    try:
        subprocess.run(
            _as_postgres(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )
        opts = (
            f"-p {port} -k {sockdir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        subprocess.run(
            _as_postgres(
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-o",
                    opts,
                    "-l",
                    str(logfile),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        started = True
        yield PgCluster("127.0.0.1", port, "postgres", bindir)
    finally:
        if started:
            subprocess.run(
                _as_postgres(
                    [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
                ),
                check=False,
                capture_output=True,
            )
        shutil.rmtree(root, ignore_errors=True)
        if previous in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _psql(cluster: PgCluster, sql: str) -> None:
    subprocess.run(
        [
            str(cluster.bindir / "psql"),
            "-h",
            cluster.host,
            "-p",
            str(cluster.port),
            "-U",
            cluster.user,
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-c",
            sql,
        ],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def postgres_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, empty database in the test cluster; dropped afterwards."""
    name = "t_" + secrets.token_hex(6)
    _psql(pg_cluster, f'CREATE DATABASE "{name}"')
    yield pg_cluster.url(name)
    _psql(pg_cluster, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
