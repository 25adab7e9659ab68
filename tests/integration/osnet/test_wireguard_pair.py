"""Two WireGuard interfaces in two namespaces joined by a veth: traffic goes through (root)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from higgs.common.keys import PrivateKey
from higgs.osnet import procs, routes
from higgs.osnet.journal import Journal
from higgs.osnet.routes import Route
from higgs.osnet.wireguard import Peer, WireGuard, parse_dump, parse_uapi, uapi_get

from .conftest import Namespaces, sh, veth
from .wgpair import WgEndSpec, wireguard_go_pair

pytestmark = pytest.mark.root


ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 7777))
print("ready", flush=True)
for _ in range(20):
    data, peer = s.recvfrom(2048)
    s.sendto(data + b" from " + peer[0].encode(), peer)
"""

ECHO_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
for attempt in range(12):  # the first datagram may wait for the handshake
    s.sendto(b"hello", (sys.argv[1], 7777))
    try:
        print(s.recv(2048).decode())
        break
    except TimeoutError:
        continue
"""


def udp_echo(ns: str, address: str) -> str:
    """Sends a datagram from ``ns`` to the echo server at ``address``; returns its answer,
    which names the source address the server saw ('' when nothing came back)."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", ECHO_CLIENT, address],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()


def start_echo_server(ns: str, address: str) -> subprocess.Popen[str]:
    server = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", ECHO_SERVER, address],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "ready"
    return server


def test_datagram_through_a_wireguard_go_pair_then_nothing_is_left(
    namespaces: Namespaces, tmp_path: Path
) -> None:
    a, b = namespaces.new("a"), namespaces.new("b")
    veth(a, "va", b, "vb")
    sh("ip", "-n", a, "addr", "add", "10.0.0.1/24", "dev", "va")
    sh("ip", "-n", b, "addr", "add", "10.0.0.2/24", "dev", "vb")
    sh("ip", "-n", b, "addr", "add", "10.98.0.1/32", "dev", "lo")  # a host "behind" b
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    name_a, name_b = namespaces.ifname("a"), namespaces.ifname("b")

    with wireguard_go_pair(
        tmp_path,
        WgEndSpec(a, name_a, key_a, "10.99.0.1/24"),
        WgEndSpec(b, name_b, key_b, "10.99.0.2/24"),
    ) as (end_a, end_b):
        wg_a, journal_a, wg_b, journal_b = end_a.wg, end_a.journal, end_b.wg, end_b.journal
        assert wg_a.backend_used == "userspace"  # this kernel has no WireGuard module
        # b knows a before a's keepalive starts a handshake: an initiation from an unknown
        # peer is dropped and WireGuard retries only after 5 s (REKEY_TIMEOUT).
        wg_b.set_peer(Peer(key_a.public_b64(), ("10.99.0.1/32",), "10.0.0.1:51820"))
        wg_a.set_peer(
            Peer(key_b.public_b64(), ("10.99.0.2/32", "10.98.0.0/24"), "10.0.0.2:51820", 25)
        )
        routes.add_route(journal_a, Route("10.98.0.0/24", dev=name_a), netns=a)

        assert routes.route_get("10.98.0.1", netns=a) == name_a
        server = start_echo_server(b, "10.98.0.1")  # killed with its namespace at teardown
        # The far end saw our tunnel address: the datagram went through WireGuard.
        assert udp_echo(a, "10.98.0.1") == "hello from 10.99.0.1"
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()

        seen_by_a = wg_a.dump().peer(key_b.public_b64())
        seen_by_b = wg_b.dump().peer(key_a.public_b64())
        assert seen_by_a is not None
        assert seen_by_b is not None
        assert seen_by_a.latest_handshake is not None
        assert seen_by_a.rx_bytes > 0
        assert seen_by_b.rx_bytes > 0
        assert seen_by_b.endpoint == "10.0.0.1:51820"
        # The socket's answer reads as `wg show dump` does, and dump() reads it without
        # starting `wg` (the client reads its peer statistics every second).
        by_socket = parse_uapi(uapi_get(wg_a.socket))
        by_wg = parse_dump(sh("ip", "netns", "exec", a, "wg", "show", name_a, "dump"))
        assert by_socket == by_wg
        assert by_socket.public_key == key_a.public_b64()
        assert by_socket.listen_port == 51820

        def no_wg(*args: str, input: str | None = None) -> str:
            raise AssertionError(f"wg {' '.join(args)} was run")

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(wg_a, "_wg", no_wg)
            assert wg_a.dump().peer(key_b.public_b64()) is not None

        # Setting the same peer again is an update, not a second peer.
        wg_b.set_peer(Peer(key_a.public_b64(), ("10.99.0.1/32",), "10.0.0.1:51820"))
        assert len(wg_b.peers()) == 1
        wg_b.remove_peer(key_a.public_b64())
        wg_b.remove_peer(key_a.public_b64())  # already gone: fine
        assert wg_b.peers() == ()

        daemons = [
            (e.undo["pid"], e.undo["start_time"])
            for j in (journal_a, journal_b)
            for e in j.entries
            if e.undo["op"] == "wireguard_go"
        ]
        assert len(daemons) == 2
        journal_a.undo_all()
        wg_b.destroy()
        assert len(journal_a) == 0
        assert len(journal_b) == 0

    for ns, name, wg in ((a, name_a, wg_a), (b, name_b, wg_b)):
        assert name not in sh("ip", "-n", ns, "link", "show")
        assert not wg.socket.exists()
    assert not any(procs.is_running(pid, start) for pid, start in daemons)
    assert "10.98.0.0/24" not in sh("ip", "-n", a, "route", "show")


def test_existing_interface_is_not_taken_over(namespaces: Namespaces, tmp_path: Path) -> None:
    a, b = namespaces.new("a"), namespaces.new("b")
    name = namespaces.ifname("x")
    veth(a, name, b, "peer0")
    with Journal(tmp_path / "journal.json") as journal:
        with pytest.raises(Exception, match="already exists"):
            WireGuard(name, journal=journal, netns=a).create()
        assert len(journal) == 0
    assert name in sh("ip", "-n", a, "link", "show")  # still there: it was not ours
