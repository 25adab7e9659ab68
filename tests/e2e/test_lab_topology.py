"""The lab itself: NAT per site, the owner's LAN private, services up, teardown complete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from higgs.lab.errors import LabError
from higgs.lab.lab import PRINTER_PORT, SMTP_PORTS, WG_RUN_DIR, Lab, leftovers_of_run, sweep_run
from higgs.lab.names import RunNames
from higgs.lab.stock import StockTunnel

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.fixture(scope="module")
def lab(shared_lab: Lab) -> Lab:
    """One lab for the module: the tests that take it only look (each asks DNS for a
    name of its own); those that tear a lab down build their own."""
    return shared_lab


def test_each_site_reaches_the_internet_through_its_own_nat(lab: Lab) -> None:
    assert lab.whoami(lab.client)["ip"] == lab.client_router.ip
    assert lab.whoami(lab.node)["ip"] == lab.home_router.ip
    assert lab.whoami(lab.printer)["ip"] == lab.home_router.ip
    assert lab.whoami(lab.server)["ip"] == lab.server.ip


def test_node_reaches_the_printer_but_the_internet_cannot(lab: Lab) -> None:
    lab.node.wait_port(PRINTER_PORT, addr=lab.printer.ip, timeout=3)
    with pytest.raises(LabError, match="nothing listens"):
        lab.client.wait_port(PRINTER_PORT, addr=lab.printer.ip, timeout=1)


def test_internet_host_offers_smtp_and_logs_dns_askers(lab: Lab) -> None:
    for port in SMTP_PORTS:
        with lab.client.socket() as sock:
            sock.settimeout(3)
            sock.connect((lab.internet.ip, port))
            assert sock.recv(100).startswith(b"220")
    assert lab.resolve(lab.node, "server.example.test") == [lab.server.ip]
    queries = lab.wait_dns_queries("server.example.test")
    assert [q.source for q in queries] == [lab.home_router.ip]


def test_teardown_removes_everything_even_untracked_processes() -> None:
    lab = Lab(services=False).build()
    try:
        tunnel = StockTunnel(lab).up()
        # A process that escaped PID tracking (backgrounded by a shell) inside our namespace.
        stray = int(lab.node.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"]).stdout)
        socks = [WG_RUN_DIR / f"{tunnel.node_if}.sock", WG_RUN_DIR / f"{tunnel.client_if}.sock"]
        assert all(s.exists() for s in socks)
        assert lab.leftovers()  # the check does see a live lab
    finally:
        lab.teardown()
    assert lab.leftovers() == []
    assert not any(s.exists() for s in socks)
    assert not Path(f"/proc/{stray}").exists() or "Z" in Path(f"/proc/{stray}/stat").read_text()
    lab.teardown()  # idempotent


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_tears_the_lab_down(signum: signal.Signals) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from higgs.lab.lab import Lab
        lab = Lab().build()
        print(lab.names.suffix, flush=True)
        time.sleep(60)
        """
    )
    names: RunNames | None = None
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        suffix = proc.stdout.readline().strip()
        names = RunNames(prefix="hl", suffix=suffix)
        assert leftovers_of_run(names)
        os.kill(proc.pid, signum)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = leftovers_of_run(names) if names else []
    if names:
        sweep_run(names)  # whatever the child left must not outlive this test
    assert proc.returncode == -signum  # died of the signal, after tearing down
    assert left == []


def test_two_labs_coexist_with_the_same_addresses() -> None:
    with Lab(services=True) as first, Lab(services=True) as second:
        assert first.names.stem != second.names.stem
        with StockTunnel(first):
            assert first.whoami(first.client)["ip"] == first.home_router.ip
            assert second.whoami(second.client)["ip"] == second.client_router.ip
    assert first.leftovers() == []
    assert second.leftovers() == []
