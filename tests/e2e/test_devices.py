"""Devices in the product lab (issue 18): a stock wireguard-go client configured only from
``higgsvpn export --name`` keeps working until the device is revoked.

One lab for the module, the session lifetime shortened to 4 s (an ordinary exported session
is seen expiring) and the UDP relay run as its own process (``bosonserver relay``), so that
it and the server restart apart. First the node is behind its NAT with no port forward (the
device goes through the UDP relay). Behind a full-cone client router, the node steers the
app off the relay onto the direct path (issue 12: WireGuard roaming). Behind the ordinary
(filtering) one the steering fails and the device stays on the relay: it works, still works
after an idle period of several lifetimes and after the node, the relay and the server were
each restarted, and its bytes are the account's usage. The node's restart gives it a port
forward (a direct endpoint; the relayed device keeps its relay port): a second device is then
exported with that endpoint and works; revoking it stops it within 5 s and the node no
longer holds the peer; the operator revokes the first; revoking an account drops its device
from the node. Last, the node leaves for good: ``higgsvpn devices`` says so, and
re-exporting gives a working config on another node (on the printer PC).
"""

from __future__ import annotations

import json
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from higgs.lab.plan import default_plan
from higgs.lab.procs import LabProcess, stop_processes
from higgs.lab.product import NODE_PORT, RelayProgram, client_cli
from higgs.lab.stock import full_tunnel_client
from higgs.lab.wireguard import KeyPair
from tests.e2e.client_system import (
    Client,
    System,
    client_public,
    home_public,
    needs_node,
    running_system,
    wait_until,
)

# The module's lab is built inside the first test's time (about 100 s on a loaded machine).
pytestmark = [pytest.mark.e2e, pytest.mark.root, needs_node, pytest.mark.timeout(480)]

RELAY_IP = str(default_plan().host("server").address().ip)
TTL_S = 4
GONE_S = 6  # a node away this long is gone for good (BOSON_DEVICE_NODE_GONE_S)
FWMARK = 51822


class Relay:
    """``bosonserver relay`` alone on the server's host, on the server's database."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.proc: LabProcess | None = None

    def start(self) -> None:
        server = self.system.server
        program = RelayProgram(self.system.lab, server.data_dir)
        self.proc = program.start("--relay-ip", RELAY_IP, "--relay-ports", "40000-40099")
        status = server.data_dir / "relay" / "relay-status.json"
        status.unlink(missing_ok=True)
        wait_until("the UDP relay to start", lambda: status.exists(), 30)

    def stop(self) -> None:
        if self.proc is not None:
            stop_processes([self.proc], timeout=20)
            self.proc = None


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    env = {
        "BOSON_UDP_RELAY_ADDRESS": RELAY_IP,
        "BOSON_UDP_RELAY_PORTS": "40000-40099",
        "BOSON_UDP_RELAY_EMBEDDED": "false",
        "BOSON_SESSION_TTL_S": str(TTL_S),
        "BOSON_SWEEP_INTERVAL_S": "1",
        "BOSON_HEARTBEAT_INTERVAL_S": "2",
        "BOSON_MISSED_HEARTBEATS": "5",
        "BOSON_PUNCH_STEER_AFTER_S": "3",
        "BOSON_PUNCH_RETRY_S": "10",
        "BOSON_DEVICE_NODE_GONE_S": str(GONE_S),
    }
    with running_system(tmp_path_factory.mktemp("devices"), direct=False, server_env=env) as s:
        relay = Relay(s)
        relay.start()
        s.relay = relay  # type: ignore[attr-defined]
        try:
            yield s
        finally:
            relay.stop()


@pytest.fixture(scope="module")
def user(system: System) -> Client:
    return system.client()


def parse_config(text: str) -> dict[str, str]:
    return {
        m.group(1).lower(): m.group(2).strip()
        for m in re.finditer(r"^(\w+)\s*=\s*(.+)$", text, re.MULTILINE)
    }


def devices(client: Client) -> dict[str, dict[str, Any]]:
    listing = json.loads(client.vpn("devices", "--json").stdout)
    return {d["name"]: d for d in listing["devices"]}


def node_peers(system: System) -> set[str]:
    host = system.node.host or system.lab.node
    out = host.run(["wg", "show", system.node.interface, "peers"], check=False)
    return set(out.stdout.split())


def endpoints(host: Any, interface: str) -> dict[str, str]:
    """``wg show IF endpoints``: peer key -> endpoint (what a user checks)."""
    out = host.run(["wg", "show", interface, "endpoints"], check=False)
    return dict(line.split("\t", 1) for line in out.stdout.splitlines() if "\t" in line)


def app_endpoint(client: Client) -> str:
    (endpoint,) = endpoints(client.host, client.lab.ifname("dv")).values()
    return endpoint


def node_status(system: System) -> dict[str, Any]:
    out = system.node.program.cli("status", "--json").stdout
    status: dict[str, Any] = json.loads(out)["status"]
    return status


def device_session(system: System, address: str) -> dict[str, Any]:
    """The device's row in ``bosonserver sessions`` (by its tunnel address)."""
    rows = json.loads(system.server.cli("sessions", "--json", "--state", "open"))
    (row,) = [r for r in rows if r["address"] == address]
    return dict(row)


def used_bytes(system: System, client: Client) -> int:
    rows = json.loads(system.server.cli("client", "list", "--json"))
    (row,) = [r for r in rows if r["name"].startswith(f"{client.name}-")]
    return int(row["used_bytes"])


def pings(client: Client, count: int = 1, size: int = 56) -> bool:
    out = client.host.run(
        ["ping", "-c", str(count), "-s", str(size), "-W", "1", client.lab.internet.ip],
        check=False,
        timeout=count * 2 + 10,
    )
    return out.returncode == 0


class StockApp:
    """wireguard-go on the client's host, configured from the exported file alone."""

    def __init__(self, client: Client, cfg: dict[str, str]) -> None:
        self.client = client
        self.proc = full_tunnel_client(
            client.host,
            client.lab.ifname("dv"),
            KeyPair(private=cfg["privatekey"], public=""),
            peer_public=cfg["publickey"],
            endpoint=cfg["endpoint"],
            address=cfg["address"].split(",")[0].strip(),
            mtu=int(cfg.get("mtu", "1380")),
            fwmark=FWMARK,
            keepalive=int(cfg.get("persistentkeepalive", "25")),
        )

    def stop(self) -> None:
        stop_processes([self.proc])
        self.client.host.run(
            ["ip", "-force", "-batch", "-"],
            input=f"rule del not fwmark {FWMARK} table {FWMARK}\n"
            f"rule del table main suppress_prefixlength 0\nroute flush table {FWMARK}\n",
            check=False,
        )


def export(client: Client, name: str, tmp: Path) -> tuple[str, dict[str, str]]:
    out, png = tmp / f"{name}.conf", tmp / f"{name}.png"
    client.vpn("export", "--name", name, "-o", str(out), "--qr-png", str(png))
    for f in (out, png):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f"{f.name} is not 0600"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = out.read_text()
    return text, parse_config(text)


def test_a_stock_app_is_steered_onto_the_direct_path_where_the_nat_allows(
    system: System, user: Client, tmp_path: Path
) -> None:
    """Issue 12's last item: the client's router filters by nothing but its mapping (full
    cone), so the node's packets to the app's public address reach it and the app roams."""
    lab = system.lab
    lab.set_nat("client_router", "full_cone")
    _, cfg = export(user, "steered", tmp_path)
    assert cfg["endpoint"].startswith(RELAY_IP + ":")  # the app starts on the UDP relay
    key, address = devices(user)["steered"]["public_key"], devices(user)["steered"]["address"]
    app = StockApp(user, cfg)
    try:
        wait_until("the app's first ping through the UDP relay", lambda: pings(user), 30)
        seen = device_session(system, address)["client_seen"]
        assert seen, "the UDP relay bound no client leg"
        assert seen.startswith(client_public(lab) + ":")
        wait_until(  # (its pings show the node it followed)
            "the node to steer the app onto the direct path",
            lambda: pings(user) and app_endpoint(user).startswith(home_public(lab) + ":"),
            45,
        )
        assert endpoints(lab.node, system.node.interface)[key] == seen
        assert pings(user, count=3)
        assert lab.whoami(user.host)["ip"] == home_public(lab)
        assert app_endpoint(user).startswith(home_public(lab) + ":")  # it stayed there
        wait_until(
            "the server to show the steered path",
            lambda: device_session(system, address)["path"] == "punched",
            15,
        )
        session = device_session(system, address)
        assert session["punched_endpoint"] == seen
        assert node_status(system)["punch"]["counters"].get("steered", 0) >= 1
    finally:
        app.stop()
        lab.set_nat("client_router", "cone")  # the ordinary filtering router from now on
    user.vpn("revoke-device", "steered")


def test_a_relayed_device_outlives_idle_periods_and_restarts(
    system: System, user: Client, tmp_path: Path
) -> None:
    lab = system.lab
    plain = parse_config(user.vpn("export").stdout)  # an ordinary session: it expires
    text, cfg = export(user, "phone", tmp_path)
    assert text.startswith("# Higgs.net device phone ")
    assert cfg["endpoint"].startswith(RELAY_IP + ":")  # no direct endpoint: the UDP relay
    phone = devices(user)["phone"]
    assert (phone["state"], phone["path"], phone["endpoint"]) == (
        "active", "udp_relay", cfg["endpoint"]
    )  # fmt: skip
    app = StockApp(user, cfg)
    try:
        wait_until("the device's first ping through the UDP relay", lambda: pings(user), 30)
        assert lab.whoami(user.host)["ip"] == home_public(lab)

        time.sleep(3 * TTL_S)  # idle (only WireGuard's keepalives) for three session lifetimes
        closed = json.loads(system.server.cli("sessions", "--json", "--state", "closed"))
        reasons = {s["close_reason"] for s in closed if s["address"] == plain["address"]}
        # (the address may have been the first test's revoked device's before)
        assert reasons - {"device_revoked"} == {"expired"}, "the ordinary session should expire"
        assert pings(user, count=2), "the device stopped working while idle"
        assert phone["public_key"] in node_peers(system)
        # The node tried to steer it (the server's steer_after_s is 3 s), its router filtered
        # that out, and the app stayed on the relay with no black hole (the pings above).
        wait_until(
            "the node to see the app did not follow",
            lambda: node_status(system)["punch"]["counters"].get("steer_not_followed", 0) >= 1,
            10,
        )
        assert pings(user, count=2)
        assert app_endpoint(user) == cfg["endpoint"]
        assert device_session(system, phone["address"])["path"] == "udp_relay"

        # The node restarts, and comes back with a port forward (a direct endpoint): the
        # device keeps its relay port, which its config names.
        system.node.stop()
        lab.forward_udp(NODE_PORT)
        system.node.endpoint = f"{home_public(lab)}:{NODE_PORT}"
        system.node.start()
        wait_until("the device after the node's restart", lambda: pings(user), 60)

        relay = system.relay  # type: ignore[attr-defined]
        relay.stop()
        relay.start()
        wait_until("the device after the relay's restart", lambda: pings(user), 60)

        system.server.kill()
        system.server.start()
        wait_until("the device after the server's restart", lambda: pings(user), 60)
        assert lab.whoami(user.host)["ip"] == home_public(lab)

        before = used_bytes(system, user)
        assert pings(user, count=20, size=1000)  # about 20 x 2 x 1 kB through the device
        wait_until(
            "the device's bytes in the account's usage",
            lambda: used_bytes(system, user) >= before + 40_000,
            30,
        )
        phone = devices(user)["phone"]
        assert phone["state"] == "active"
        assert phone["rx_bytes"] > 0
        assert phone["tx_bytes"] > 0
    finally:
        app.stop()


def test_a_direct_device_and_revocation(system: System, user: Client, tmp_path: Path) -> None:
    lab = system.lab
    assert system.node.endpoint  # the first test's restart gave the node a direct endpoint
    _, cfg = export(user, "laptop", tmp_path)
    assert cfg["endpoint"] == system.node.endpoint
    listed = devices(user)
    assert listed["laptop"]["path"] == "direct"
    assert listed["phone"]["state"] == "active"  # the relayed device is still there
    app = StockApp(user, cfg)
    try:
        wait_until("the direct device's first ping", lambda: pings(user), 30)
        assert lab.whoami(user.host)["ip"] == home_public(lab)
        assert system.server.relayed_datagrams() == 0

        # From another host (the user's other computer): this host's own traffic to the
        # server goes through the tunnel that the revocation ends.
        cfg_file = user.state_dir / "higgsvpn.toml"
        client_cli(lab.server, cfg_file, "revoke-device", "laptop", timeout=60)
        revoked = time.monotonic()
        wait_until("the revoked device to stop", lambda: not pings(user), 5, every=0.2)
        assert time.monotonic() - revoked <= 5
        assert listed["laptop"]["public_key"] not in node_peers(system)
    finally:
        app.stop()
    assert "laptop" not in devices(user)  # (asked without the dead tunnel in the way)

    # The operator revokes the other one (the CLI writes the database; the server tells
    # the node at its next sweep).
    rows = json.loads(system.server.cli("device", "list", "--json"))
    (phone,) = [d for d in rows if d["name"] == "phone"]
    system.server.cli("device", "revoke", phone["device_id"])
    wait_until("the node to drop the operator-revoked device",
               lambda: phone["public_key"] not in node_peers(system), 5, every=0.2)  # fmt: skip

    # Revoking the account drops its devices at once.
    other = system.client()
    _, cfg = export(other, "tablet", tmp_path)
    tablet_key = devices(other)["tablet"]["public_key"]
    assert tablet_key in node_peers(system)
    system.server.cli("client", "revoke", f"{other.name}-{lab.names.stem}")
    wait_until("the node to drop the revoked account's device",
               lambda: tablet_key not in node_peers(system), 5, every=0.2)  # fmt: skip


def test_a_node_gone_for_good_and_re_export(system: System, user: Client, tmp_path: Path) -> None:
    lab = system.lab
    _, cfg = export(user, "tab", tmp_path)
    assert devices(user)["tab"]["state"] == "active"
    old_node = devices(user)["tab"]["node_id"]
    other = system.add_node(lab.printer, "p2")  # another node of the operator's
    system.node.stop()
    wait_until(
        "higgsvpn devices to say the node is gone",
        lambda: devices(user)["tab"]["state"] == "node_gone",
        GONE_S + 30,
    )
    _, cfg = export(user, "tab", tmp_path)  # the same name: the dead one is replaced
    tab = devices(user)["tab"]
    assert (tab["state"], tab["node_id"]) == ("active", other.node_id)
    assert tab["node_id"] != old_node
    app = StockApp(user, cfg)
    try:
        wait_until("the re-exported device's first ping", lambda: pings(user), 30)
        assert lab.whoami(user.host)["ip"] == home_public(lab)
        assert tab["public_key"] in endpoints(lab.printer, other.interface)
    finally:
        app.stop()
