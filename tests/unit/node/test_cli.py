"""The higgsnode command line, run as a user would run it (a real subprocess)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from higgs.lab.product import run_program
from higgs.node.runstate import PidFile, read_status, write_status


def higgsnode(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_program("higgsnode", *args, env=env)


@pytest.mark.parametrize("command", ["start", "stop", "status", "diagnose", "cleanup"])
def test_every_command_has_help(command: str) -> None:
    out = higgsnode(command, "--help")
    assert out.returncode == 0
    assert "--state-dir" in out.stdout
    assert "--interface" in out.stdout


def test_no_command_is_a_usage_error() -> None:
    out = higgsnode()
    assert out.returncode == 2
    assert "start" in out.stderr


def test_invalid_config_names_the_field_before_touching_anything(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "node.toml"
    cfg.write_text('server = "http://127.0.0.1:9"\nlisten_port = 99999\n')
    out = higgsnode("start", "--config", str(cfg), "--state-dir", str(state))
    assert out.returncode == 1
    assert "listen_port" in out.stderr
    assert f"config file {cfg}" in out.stderr
    assert "Traceback" not in out.stderr
    assert not state.exists()

    out = higgsnode("start", "--interface", "way-too-long-name", "--state-dir", str(state))
    assert out.returncode == 1
    assert "field 'interface' (command line)" in out.stderr
    assert not state.exists()


def test_start_without_server_says_so(tmp_path: Path) -> None:
    out = higgsnode("start", "--state-dir", str(tmp_path / "s"))
    assert out.returncode == 1
    assert "--server" in out.stderr


def test_status_and_stop_when_not_running(tmp_path: Path) -> None:
    out = higgsnode("status", "--state-dir", str(tmp_path))
    assert out.returncode == 1
    assert "not running" in out.stdout
    out = higgsnode("status", "--json", "--state-dir", str(tmp_path))
    assert json.loads(out.stdout) == {"running": False, "pid": None, "status": None}
    out = higgsnode("stop", "--state-dir", str(tmp_path))
    assert out.returncode == 0
    assert "not running" in out.stdout


def test_a_second_agent_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    with PidFile(tmp_path), pytest.raises(Exception, match="already running"), PidFile(tmp_path):
        pass
    out = higgsnode("status", "--json", "--state-dir", str(tmp_path))
    assert json.loads(out.stdout)["running"] is False  # the lock went with the holder


def test_a_new_agent_does_not_show_the_status_a_crashed_one_left(tmp_path: Path) -> None:
    # What a SIGKILLed agent leaves: its last status, saying it was online.
    write_status(tmp_path, {"server": {"state": "online", "node_id": "n_old"}})
    with PidFile(tmp_path):
        assert read_status(tmp_path) is None
        out = higgsnode("status", "--json", "--state-dir", str(tmp_path))
        assert json.loads(out.stdout)["status"] is None
