"""The operator CLI on a real database (SQLite file and PostgreSQL), run as a subprocess."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest


def boson(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOSON_")}
    return subprocess.run(
        [sys.executable, "-m", "higgs.server.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )


@pytest.fixture
def db_args(tmp_path: Path, database: str | None) -> list[str]:
    args = ["--data-dir", str(tmp_path / "data")]
    return [*args, "--database", database] if database else args


def test_operator_flow(db_args: list[str], tmp_path: Path) -> None:
    before = boson("client", "list", *db_args)
    assert before.returncode == 1
    assert "bosonserver migrate" in before.stderr

    mig = boson("migrate", *db_args)
    assert mig.returncode == 0, mig.stderr
    assert "-> 0001" in mig.stdout
    token_file = tmp_path / "data" / "admin.token"
    admin = token_file.read_text().strip()
    assert admin.startswith("hga_")
    assert admin in mig.stdout
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    add = boson("client", "add", "alice", *db_args)
    assert add.returncode == 0, add.stderr
    token = add.stdout.strip()
    assert token.startswith("hgc_")
    dup = boson("client", "add", "alice", *db_args)
    assert dup.returncode == 1
    assert "already exists" in dup.stderr

    listing = boson("client", "list", "--json", *db_args)
    assert listing.returncode == 0
    assert token not in listing.stdout
    assert "hgc_" not in listing.stdout
    assert [c["name"] for c in json.loads(listing.stdout)] == ["alice"]

    key = boson("enroll", "create", "--uses", "3", "--expires", "2h", *db_args)
    assert key.returncode == 0, key.stderr
    assert key.stdout.strip().startswith("hge_")
    keys = boson("enroll", "list", "--json", *db_args)
    (entry,) = json.loads(keys.stdout)
    assert entry["uses_left"] == 3
    assert entry["expires_at"] is not None
    assert "hge_" not in keys.stdout

    revoke = boson("client", "revoke", "alice", *db_args)
    assert revoke.returncode == 0
    assert "revoked" in revoke.stdout
    missing = boson("client", "revoke", "nobody", *db_args)
    assert missing.returncode == 1
    assert "no client named" in missing.stderr

    nodes = boson("nodes", "--json", *db_args)
    assert nodes.returncode == 0
    assert json.loads(nodes.stdout) == []
    sessions = boson("sessions", *db_args)
    assert sessions.returncode == 0
    assert "(none)" in sessions.stdout


def test_bad_database_url_is_a_clear_error(tmp_path: Path) -> None:
    r = boson("migrate", "--data-dir", str(tmp_path), "--database", "mysql://x@y/z")
    assert r.returncode == 1
    assert "unsupported backend" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_setting_from_environment_names_the_field(tmp_path: Path) -> None:
    env_run = subprocess.run(
        [sys.executable, "-m", "higgs.server.cli", "nodes", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "BOSON_SESSION_TTL_S": "forever"},
    )
    assert env_run.returncode == 1
    assert "session_ttl_s" in env_run.stderr
    assert "environment" in env_run.stderr
