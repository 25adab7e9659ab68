"""Per-client connection limits, live (issue 6 item 4): the real higgsnode with low limits
(LIMITS below), two client hosts with stock WireGuard clients, and the SMTP-submission
listener of the lab's internet host (587) as the far end.

- A burst of new connections from one client is cut to the configured rate: some of the
  attempts are dropped, while a client staying under the rate gets every connection -- even
  right after the other client's burst, since the limits are per client.
- One client cannot hold more than the configured number of connections at once; closing one
  makes room again, and the other client is not affected.

Both firewall backends. Every address is the lab's own.
"""

from __future__ import annotations

import errno
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from higgs.lab.host import Host
from higgs.lab.lab import Lab
from higgs.lab.plan import default_plan
from higgs.lab.product import Product, serving_stock_clients
from higgs.lab.stock import StockClient

pytestmark = [pytest.mark.e2e, pytest.mark.root]

PORT = 587  # the internet host's listener: a banner, then it echoes and stays open
RATE = 5  # new connections per second per client
BURST = 5
MAX_CONNS = 8
LIMITS = (
    f"[limits]\nconnections_per_client = {MAX_CONNS}\n"
    f"new_connections_per_s = {RATE}\nnew_connections_burst = {BURST}\n"
)
ATTEMPTS = 40
# Below the 1-second first SYN retransmission: a dropped SYN is a failed attempt, not a late
# success that the rate let through on the retry.
BURST_WAIT_S = 0.8
UNDER_RATE_GAP_S = 1.5 / RATE  # 3.3 connections per second: comfortably under the rate


@dataclass
class Limited:
    lab: Lab
    product: Product
    backend: str
    clients: list[StockClient]


@pytest.fixture(scope="module", params=["nft", "iptables"])
def limited(request: pytest.FixtureRequest) -> Iterator[Limited]:
    backend: str = request.param
    lab = Lab(plan=default_plan(clients=2)).build()
    config = f'firewall = "{backend}"\n{LIMITS}'
    try:
        with serving_stock_clients(lab, [lab.client, lab.host("client2")], config=config) as (
            product,
            clients,
        ):
            yield Limited(lab, product, backend, clients)
    finally:
        lab.teardown()
    assert not lab.leftovers()


def burst(host: Host, addr: str, count: int, wait_s: float) -> tuple[int, int]:
    """Starts ``count`` connections at once; (established, refused) within ``wait_s`` -- the
    rest got no answer at all. Every socket is closed before returning."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = host.socket()
            s.setblocking(False)
            socks.append(s)
            err = s.connect_ex((addr, PORT))
            assert err in (0, errno.EINPROGRESS), errno.errorcode.get(err, err)
        pending = set(socks)
        established = refused = 0
        deadline = time.monotonic() + wait_s
        while pending and (left := deadline - time.monotonic()) > 0:
            _, writable, _ = select.select([], list(pending), [], left)
            for s in writable:
                pending.discard(s)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    established += 1
                else:
                    refused += 1
        return established, refused
    finally:
        for s in socks:
            s.close()


def connect(host: Host, addr: str, timeout: float = 3.0) -> socket.socket | None:
    """One connection that greets us (the listener's banner), or None when it fails."""
    s = host.socket()
    s.settimeout(timeout)
    try:
        s.connect((addr, PORT))
        if s.recv(100).startswith(b"220"):
            return s
    except OSError:
        pass
    s.close()
    return None


def paced(host: Host, addr: str, count: int) -> int:
    """``count`` connections one after another under the rate, each closed again; how many
    succeeded."""
    ok = 0
    for _ in range(count):
        s = connect(host, addr)
        if s is not None:
            ok += 1
            s.close()
        time.sleep(UNDER_RATE_GAP_S)
    return ok


def settle() -> None:
    """Lets a client's rate bucket fill up again (BURST tokens at RATE per second)."""
    time.sleep(BURST / RATE + 1)


def test_a_burst_of_new_connections_is_cut_to_the_rate_per_client(limited: Limited) -> None:
    lab = limited.lab
    target = lab.internet.ip
    settle()
    # The control: the same burst is fine for the network itself (from the client's router,
    # outside the tunnel, nothing limits it).
    assert burst(lab.client_router, target, ATTEMPTS, BURST_WAIT_S * 3) == (ATTEMPTS, 0)
    got, refused = burst(lab.client, target, ATTEMPTS, BURST_WAIT_S)
    print(f"{limited.backend}: {got} of {ATTEMPTS} connections in a burst got through")
    assert 1 <= got < ATTEMPTS / 2, got
    # The rest were dropped by the rate limit, not refused by the connection limit: the few
    # that got through are far below MAX_CONNS, and the dropped ones must not count.
    assert refused == 0, f"{refused} refused"
    # Right after, the other client opens connections under the rate: every one works.
    assert paced(lab.host("client2"), target, 2 * BURST) == 2 * BURST
    # And the first client, once it keeps to the rate, gets all of its connections again.
    settle()
    assert paced(lab.client, target, 2 * BURST) == 2 * BURST


def test_a_client_cannot_hold_more_than_its_connections_at_once(limited: Limited) -> None:
    lab = limited.lab
    target = lab.internet.ip
    settle()
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNS):
            s = connect(lab.client, target)
            assert s is not None, f"connection {len(held) + 1} of {MAX_CONNS} failed"
            held.append(s)
            time.sleep(UNDER_RATE_GAP_S)
        extra = connect(lab.client, target)
        assert extra is None, f"connection {MAX_CONNS + 1} got through"
        # The other client is not affected.
        other = connect(lab.host("client2"), target)
        assert other is not None
        other.close()
        # Closing one makes room for one more.
        held.pop().close()
        time.sleep(UNDER_RATE_GAP_S)
        again = connect(lab.client, target)
        assert again is not None, "no room after closing a connection"
        held.append(again)
    finally:
        for s in held:
            s.close()
