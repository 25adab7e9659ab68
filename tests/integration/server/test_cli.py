"""The operator CLI on a real database (SQLite file and PostgreSQL), run as a subprocess
(by the harness, :mod:`higgs.lab.product`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import httpx
import pytest
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from higgs.common.keys import PrivateKey
from higgs.lab.loopback import Loopback
from higgs.lab.product import loopback_program, run_program
from higgs.lab.wait import wait_until
from higgs.protocol import keyproof
from higgs.protocol.relay import PROTOCOL_VERSION, VERSION_HEADER, CloseCode
from higgs.server.store.migrate import head_revision
from tests.integration.server.conftest import bearer, node_body


class CloseRecorder(WSListener):
    """A bare node link that records the close code the server sends."""

    def __init__(self) -> None:
        self.hello = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_code: int | None = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT and b'"hello"' in frame.get_payload_as_bytes():
            self.hello.set()
        elif frame.msg_type == WSMsgType.CLOSE:
            self.close_code = int(frame.get_close_code())  # type: ignore[call-overload]
            self.closed.set()


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BOSON_")}


def boson(*args: str) -> subprocess.CompletedProcess[str]:
    return run_program("bosonserver", *args, env=_clean_env())


@pytest.fixture
def db_args(tmp_path: Path, database: str | None) -> list[str]:
    args = ["--data-dir", str(tmp_path / "data")]
    return [*args, "--database", database] if database else args


@pytest.mark.stores
def test_operator_flow(db_args: list[str], tmp_path: Path) -> None:
    before = boson("client", "list", *db_args)
    assert before.returncode == 1
    assert "bosonserver migrate" in before.stderr

    mig = boson("migrate", *db_args)
    assert mig.returncode == 0, mig.stderr
    assert f"-> {head_revision()}" in mig.stdout
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
    env_run = run_program(
        "bosonserver",
        *("nodes", "--data-dir", str(tmp_path)),
        env={**os.environ, "BOSON_SESSION_TTL_S": "forever"},
    )
    assert env_run.returncode == 1
    assert "session_ttl_s" in env_run.stderr
    assert "environment" in env_run.stderr


async def test_serve_answers_and_stops_on_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bosonserver serve` as a process (started by the harness on loopback): says where the
    admin token is, serves, SIGTERM closes the node links with 1001 and exits 0."""
    for name in [k for k in os.environ if k.startswith("BOSON_")]:
        monkeypatch.delenv(name)  # the defaults, as in a fresh shell
    with Loopback(tmp_path) as loopback:
        server = loopback_program(loopback, tmp_path / "data")
        proc = server.start(timeout=60)
        data, api = server.data_dir, server.url
        log = wait_until(
            "the admin token's line",
            lambda: "admin token created in" in (text := proc.log_text()) and text,
            timeout=10,
        )
        # Its value is never in the daemon's output (which goes to the journal).
        assert (data / "admin.token").read_text().strip() not in log
        enroll = boson("enroll", "create", "--data-dir", str(data)).stdout.strip()
        async with httpx.AsyncClient(base_url=api, timeout=10) as http:
            assert (await http.get("/readyz")).status_code == 200
            # The real server requires the key proof (docs/protocol.md §2.1).
            key = PrivateKey.generate()
            challenge = (await http.post("/v1/nodes/challenge", headers=bearer(enroll))).json()
            mac = keyproof.node_proof(key.raw, challenge["server_key"], challenge["nonce"])
            body = node_body(public_key=key.public_b64())
            body["proof"] = {"nonce": challenge["nonce"], "mac": mac}
            reg = await http.post("/v1/nodes/register", json=body, headers=bearer(enroll))
            assert reg.status_code == 201, reg.text
        node = CloseRecorder()
        url = reg.json()["relay_url"]
        headers = {
            "Authorization": f"Bearer {reg.json()['node_token']}",
            VERSION_HEADER: str(PROTOCOL_VERSION),
        }
        transport, _ = await ws_connect(lambda: node, url, extra_headers=headers)
        await asyncio.wait_for(node.hello.wait(), 10)
        proc.popen.send_signal(signal.SIGTERM)
        # In a thread: this loop reads the close frame meanwhile.
        assert await asyncio.to_thread(proc.popen.wait, 30) == 0
        await asyncio.wait_for(node.closed.wait(), 10)
        assert node.close_code == CloseCode.GOING_AWAY
        transport.disconnect()
