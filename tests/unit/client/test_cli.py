"""higgsvpn's command line as a user meets it: clear errors, never a traceback."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from higgs.lab.product import run_program

TOKEN = "hgc_" + "u" * 30


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_program("higgsvpn", *args, env={"PATH": "/usr/bin:/bin", **(env or {})})


def test_connect_without_token_says_how_to_give_one(tmp_path: Path) -> None:
    out = _run("connect", "--state-dir", str(tmp_path))
    assert out.returncode == 1
    assert "a client token is needed" in out.stderr
    assert "Traceback" not in out.stderr
    assert not list(tmp_path.iterdir()), "nothing may be created before the input is valid"


def test_bad_flag_value_names_the_field(tmp_path: Path) -> None:
    out = _run("connect", "--state-dir", str(tmp_path), "--split", "10.0.0.0/33")
    assert out.returncode == 1
    assert "field 'split' (command line)" in out.stderr
    out = _run("connect", "--mode", "udp")
    assert out.returncode == 2  # argparse: usage error


def test_status_and_disconnect_when_not_connected(tmp_path: Path) -> None:
    out = _run("status", "--json", "--state-dir", str(tmp_path))
    assert out.returncode == 0
    assert json.loads(out.stdout) == {"connected": False, "state": "not connected"}
    out = _run("disconnect", "--state-dir", str(tmp_path))
    assert out.returncode == 0
    assert out.stdout.strip() == "not connected"


def test_unreachable_server_is_reported_not_raised(tmp_path: Path) -> None:
    # Port 9 (discard) on loopback: nothing listens there.
    out = _run(
        "nodes",
        "--server",
        "http://127.0.0.1:9",
        "--state-dir",
        str(tmp_path),
        env={"HIGGSVPN_TOKEN": TOKEN},
    )
    assert out.returncode == 1
    assert "cannot reach the server http://127.0.0.1:9" in out.stderr
    assert TOKEN not in out.stderr


def test_config_file_and_env(tmp_path: Path) -> None:
    cfg = tmp_path / "higgsvpn.toml"
    cfg.write_text(f'state_dir = "{tmp_path}"\nserver_url = "http://127.0.0.1:9"\n')
    out = _run("nodes", "--config", str(cfg), env={"HIGGSVPN_TOKEN": TOKEN})
    assert "cannot reach the server http://127.0.0.1:9" in out.stderr
