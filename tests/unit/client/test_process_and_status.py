from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from higgs.client.status import StatusReport, format_status, read_status, write_status
from higgs.daemon import pidfile
from higgs.daemon.pidfile import AlreadyRunning, PidFile


def test_pidfile_names_this_process_while_held(tmp_path: Path) -> None:
    path = tmp_path / "daemon.pid"
    with PidFile(path) as handle:
        assert handle.pid == os.getpid()
        assert pidfile.read(path) == handle
        with pytest.raises(AlreadyRunning, match=str(os.getpid())), PidFile(path):
            pass
        assert pidfile.read(path) == handle  # the refused second one changed nothing
    assert not path.exists()


def test_stale_pidfile_with_a_reused_pid_is_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "daemon.pid"
    # Nobody holds the lock: a crash left it, even though the PID is alive.
    path.write_text(f"{os.getpid()} {pidfile.start_time_of(os.getpid())}\n")
    assert pidfile.read(path) is None
    path.write_text("garbage\n")
    assert pidfile.read(path) is None


def test_a_held_pidfile_with_another_start_time_is_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "daemon.pid"
    with PidFile(path):
        # Our PID but another start time: a recycled PID must never be signalled.
        path.write_text(f"{os.getpid()} 1\n")
        assert pidfile.read(path) is None


def test_leaving_keeps_a_file_that_names_another_daemon(tmp_path: Path) -> None:
    path = tmp_path / "daemon.pid"
    with PidFile(path):
        path.write_text("1 2\n")  # another daemon took over
    assert path.read_text() == "1 2\n"


def test_stop_daemon_terminates_and_waits(tmp_path: Path) -> None:
    pid_path = tmp_path / "p.pid"
    code = (
        "import sys, time; from pathlib import Path; from higgs.daemon.pidfile import PidFile;"
        f"p = PidFile(Path({str(pid_path)!r})); p.__enter__(); print('up', flush=True); "
        "time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "up"
        handle = pidfile.read(pid_path)
        assert handle is not None
        assert handle.pid == proc.pid
        # Reap in the background as the real parent (init) would.
        started = time.monotonic()
        threading.Thread(target=proc.wait, daemon=True).start()
        assert pidfile.stop(handle, timeout=10)
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _report(**kw: object) -> StatusReport:
    base: dict[str, object] = {
        "pid": 42,
        "state": "connected",
        "interface": "higgs0",
        "server_url": "https://boson.example",
        "session_id": "s_0123456789abcdef",
        "node_id": "n_0123456789abcdef",
        "country": "DE",
        "region": "Berlin",
        "mode": "relay",
        "address": "10.77.0.5/32",
        "dns": ["10.77.0.1"],
        "full_tunnel": True,
        "kill_switch": True,
        "connected_at": 1000.0,
        "latest_handshake": 1990.0,
        "rx_bytes": 3 * 1024 * 1024,
        "tx_bytes": 512,
        "tunnel_rtt_ms": 12.34,
        "server_rtt_ms": None,
        "relay_reconnects": 1,
        "reroutes": 0,
        "last_error": None,
        "updated_at": 1995.0,
    }
    base.update(kw)
    return StatusReport.model_validate(base)


def test_status_round_trip_and_display(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_status(path, _report())
    report = read_status(path)
    assert report == _report()
    assert (path.stat().st_mode & 0o777) == 0o600
    text = format_status(report, now=2000.0)
    assert "node:       n_0123456789abcdef (DE, Berlin)" in text
    assert "mode:       relay" in text
    assert "handshake:  10 s ago" in text
    assert "3.0 MiB received, 512 B sent" in text
    assert "tunnel 12.3 ms, server -" in text
    assert "1 relay reconnect(s)" in text
    data = report.to_json()
    assert data["connected"] is True
    assert data["handshake_age_s"] is not None


def test_no_handshake_yet_and_broken_file(tmp_path: Path) -> None:
    assert "handshake:  never" in format_status(_report(latest_handshake=0.0))
    bad = tmp_path / "status.json"
    bad.write_text("{not json")
    assert read_status(bad) is None
    assert read_status(tmp_path / "missing.json") is None
