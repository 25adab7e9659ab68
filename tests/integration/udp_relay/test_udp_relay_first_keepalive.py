"""The first handshake through the kernel-mode relay completes on the responder too (root).

The responder counts a WireGuard handshake complete only when the initiator's first data
packet (its keepalive, sent one round trip after the response) arrives. The relay used to put
the flow into the kernel right after forwarding the response; the keepalive then arrived
while the ``nft``/``conntrack`` commands ran, was queued on the relay's socket and dropped as
``in_kernel`` (sending it from the socket would black-hole the kernel's flow), and the
responder waited for the next initiation, 5 s and more: the first-handshake flake of the e2e
tests on a loaded machine. Scripted legs (valid mac1 for the session's keys) make the order
deterministic: the node initiates, the client answers, the node's keepalive follows at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from higgs.common.keys import PrivateKey
from higgs.relay.forwarder import SessionSpec
from higgs.relay.sessions_file import write_sessions
from tests.integration.osnet.conftest import veth
from tests.integration.osnet.namespaces import Namespaces, sh
from tests.unit.relay import vectors

from .test_udp_relay import PORT, RELAY_IP, Lab, wait_for

pytestmark = pytest.mark.root

CLONE_NEWNET = 0x40000000


def socket_in(ns: str, addr: tuple[str, int]) -> socket.socket:
    """A UDP socket bound inside namespace ``ns`` (a socket keeps the namespace it was made in)."""
    libc = ctypes.CDLL(None, use_errno=True)
    here = os.open("/proc/self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(addr)
            s.settimeout(3.0)
        finally:
            if libc.setns(here, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(here)
        os.close(there)
    return s


@pytest.fixture
def lab(namespaces: Namespaces, tmp_path: Path) -> Iterator[Lab]:
    c, r, n = (namespaces.new(x) for x in ("c", "r", "n"))
    veth(c, "vc", r, "rc")
    veth(n, "vn", r, "rn")
    for ns, dev, addr in ((c, "vc", "10.0.1.2/24"), (r, "rc", "10.0.1.1/24"),
                          (n, "vn", "10.0.2.2/24"), (r, "rn", "10.0.2.1/24")):  # fmt: skip
        sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
    sh("ip", "-n", r, "addr", "add", f"{RELAY_IP}/32", "dev", "lo")
    for ns, gw in ((c, "10.0.1.1"), (n, "10.0.2.1")):
        sh("ip", "-n", ns, "route", "add", "default", "via", gw)
    spec = SessionSpec("s_first", PORT, vectors.CLIENT_PUB, vectors.NODE_PUB)
    write_sessions(tmp_path / "s.json", [spec])
    tag = namespaces.tag.replace("-", "")[:12]
    lab = Lab(c, r, n, "", tmp_path, tag, PrivateKey.generate(), PrivateKey.generate())
    try:
        yield lab
    finally:
        if lab.proc is not None:
            lab.proc.kill()
            lab.proc.wait()


def test_the_initiators_first_keepalive_reaches_the_responder(lab: Lab) -> None:
    lab.start_relay(userspace=False)
    assert lab.status()["mode"] == "kernel"
    relay = (RELAY_IP, PORT)
    client = socket_in(lab.client, ("10.0.1.2", 51820))
    node = socket_in(lab.node, ("10.0.2.2", 51820))
    try:
        # The client tried first (no node leg yet: dropped, but it is the client's candidate).
        client.sendto(vectors.initiation(1, vectors.NODE_PUB), relay)
        wait_for("the client's initiation", lambda: lab.status()["drops"].get("no_peer", 0) >= 1)
        # The node initiates; the relay passes it to the client candidate; the client answers.
        node.sendto(vectors.initiation(2, vectors.CLIENT_PUB), relay)
        got, _ = client.recvfrom(2048)
        assert got[0] == 1
        client.sendto(vectors.response(3, 2, vectors.NODE_PUB), relay)
        got, _ = node.recvfrom(2048)
        assert got[0] == 2  # the response: the node's handshake is complete, both legs bound
        # The node's keepalive, at once (wireguard-go sends it on consuming the response).
        keepalive = vectors.data(3, counter=0, payload=16)
        node.sendto(keepalive, relay)
        got, _ = client.recvfrom(2048)  # raises TimeoutError when the relay dropped it
        assert got == keepalive
        # Then the flow goes into the kernel (CONFIRM_S later) and the legs' data passes there.
        counter = iter(range(1, 10_000))

        def in_kernel() -> bool:
            node.sendto(vectors.data(3, counter=next(counter)), relay)
            return int(lab.status()["kernel_packets"]) > 0  # a datagram lost meanwhile is fine

        wait_for("the flow in the kernel", in_kernel, timeout=20)
        before = lab.status()["kernel_packets"]
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while client.recv(2048):  # what the loop above delivered
                pass
        client.settimeout(3.0)
        for i in range(20_000, 20_005):
            node.sendto(vectors.data(3, counter=i), relay)
            assert client.recvfrom(2048)[0] == vectors.data(3, counter=i)
        wait_for("the kernel counters", lambda: lab.status()["kernel_packets"] >= before + 5)
    finally:
        client.close()
        node.close()
        lab.stop_relay()
