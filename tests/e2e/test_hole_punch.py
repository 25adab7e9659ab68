"""Hole punching in the product lab (issue 12): the node behind its home router with no port
forward and no miniupnpd, the client behind its own router; both NATs cone or symmetric.

One lab for the whole module: the routers' NAT type is switched between the cases
(``Lab.set_nat``), each case a new connect. Expected outcome per pair (docs/client.md):

| home / client       | path       | why                                                        |
|---------------------|------------|------------------------------------------------------------|
| cone / cone         | punched    | each side's public ip:port is the one the relay saw         |
| cone / symmetric    | udp_relay  | the client's mapping toward the node is a new random port   |
| symmetric / cone    | udp_relay  | the node's mapping toward the client is a new random port   |
| symmetric/symmetric | udp_relay  | both                                                        |

In every case traffic flows all along (the relay stays until the probes met), and the
punched path really is direct: the client's WireGuard endpoint is the home router's address,
and the relay's counters stop growing.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from higgs.client.status import read_status
from higgs.lab import Host, Lab
from higgs.lab.netns import ns_argv
from higgs.lab.plan import NatType, default_plan
from tests.e2e.client_system import (
    Client,
    System,
    disconnect_all,
    home_public,
    needs_node,
    running_system,
    wait_until,
)
from tests.e2e.home_address import (
    NEW_HOME_PUBLIC,
    add_address,
    restore_home_address,
    snat_to_new_address,
)

pytestmark = [pytest.mark.e2e, pytest.mark.root, needs_node]

RELAY_IP = str(default_plan().host("server").address().ip)

# cone/cone (punched) is test_cone_cone_punches_within_10_s_in_19_of_20_attempts.
RELAY_PAIRS: list[tuple[NatType, NatType]] = [
    ("cone", "symmetric"),
    ("symmetric", "symmetric"),
    ("symmetric", "cone"),
]
PING_EVERY_S = 0.1
ENDS_WITHIN_S = 10.0  # the done-when: "end on the relay within 10 s, with no black hole"
MAX_GAP_S = 1.0


@pytest.fixture(scope="module")
def punch_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    env = {
        "BOSON_UDP_RELAY_ADDRESS": RELAY_IP,
        "BOSON_UDP_RELAY_PORTS": "40100-40199",
        "BOSON_PUNCH_RETRY_S": "8",
    }
    with running_system(tmp_path_factory.mktemp("punch"), direct=False, server_env=env) as s:
        yield s


@pytest.fixture
def punch(punch_system: System) -> Iterator[System]:
    yield punch_system
    disconnect_all(punch_system)


def sessions(system: System) -> list[dict[str, Any]]:
    listing = json.loads(system.server.cli("sessions", "--json", "--state", "open"))
    return list(listing["sessions"] if isinstance(listing, dict) else listing)


def pings(host: Host, lab: Lab) -> bool:
    out = host.run(["ping", "-c", "1", "-W", "1", lab.internet.ip], check=False)
    return out.returncode == 0


def daemon_report(client: Client) -> dict[str, Any]:
    """The daemon's status file, read directly: what ``higgsvpn status`` prints, without its
    start-up (seconds on a busy machine, which would blur every timing here). {} if none."""
    report = read_status(client.state_dir / "status.json")
    return report.to_json() if report is not None else {}


def wg_endpoint(client: Client) -> str:
    out = client.host.run(["wg", "show", client.interface, "endpoints"]).stdout
    return out.split()[-1] if out.strip() else ""


def new_client(system: System) -> Client:
    """A client that gives the UDP relay 25 s: its handshake needs one of the node's
    initiations to meet the client's at the relay (WireGuard retries every 5 s), and on
    this shared, loaded machine 12 s were once not enough."""
    client = system.client()
    with (client.state_dir / "higgsvpn.toml").open("a") as fh:
        fh.write("udp_relay_timeout_s = 25\n")
    return client


def connect(system: System, client: Client) -> dict[str, object]:
    """Right after a NAT switch the node's control link may still be reconnecting."""
    last: Exception | None = None
    for _ in range(10):
        try:
            return client.connect()
        except Exception as exc:  # the node is back within a few seconds
            last = exc
            time.sleep(1.5)
    assert last is not None
    raise last


class Pinger:
    """``ping`` every 100 ms from the client through the tunnel, in the background; the
    longest run of unanswered ones is the worst gap in traffic (a black hole shows as one
    that never ends)."""

    def __init__(self, host: Host, target: str, seconds: float) -> None:
        self.count = round(seconds / PING_EVERY_S)
        argv = ["ping", "-n", "-i", str(PING_EVERY_S), "-c", str(self.count), "-W", "1", target]
        self.proc = subprocess.Popen(
            ns_argv(host.ns, argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )

    def longest_gap_s(self) -> float:
        out, _ = self.proc.communicate(timeout=self.count * PING_EVERY_S + 30)
        seen = {int(m.group(1)) for m in re.finditer(r"icmp_seq=(\d+)", out)}
        longest = run = 0
        for seq in range(1, self.count + 1):
            run = 0 if seq in seen else run + 1
            longest = max(longest, run)
        return longest * PING_EVERY_S


@pytest.mark.parametrize(("home", "client_nat"), RELAY_PAIRS, ids=lambda v: str(v))
def test_nat_pair_that_cannot_punch_ends_on_the_relay(
    punch: System, home: NatType, client_nat: NatType
) -> None:
    lab = punch.lab
    lab.set_nat("home_router", home)
    lab.set_nat("client_router", client_nat)
    client = new_client(punch)
    answer = connect(punch, client)
    assert answer["mode"] == "udp_relay", f"{client.status()}\n{lab.log_tails(30)}"
    pinger = Pinger(client.host, lab.internet.ip, ENDS_WITHIN_S + 5)
    try:
        wait_until(
            "the failed punch attempt",
            lambda: "hole punching" in daemon_report(client).get("path_why", ""),
            30,
            0.2,
        )
    finally:
        gap = pinger.longest_gap_s()
    status = client.status()
    # The daemon's stamps: from the relay being up to the end of the first attempt, which
    # failed (the status poll may have seen later ones, every BOSON_PUNCH_RETRY_S).
    first_at, result = status["punches"][0]
    assert result == "failed", status
    ended = float(first_at) - float(status["connected_at"])
    print(f"{home}/{client_nat}: on the relay for good {ended:.2f} s after it was up; "
          f"longest gap in pings every {PING_EVERY_S:g} s: {gap:.1f} s")  # fmt: skip
    assert status["mode"] == "udp_relay"
    assert "symmetric" in status["path_why"]
    assert wg_endpoint(client).startswith(RELAY_IP + ":")
    assert ended <= ENDS_WITHIN_S
    assert gap <= MAX_GAP_S, f"traffic stopped for {gap:.1f} s: a black hole"
    assert pings(client.host, lab), "no traffic after the failed attempt: a black hole"


# The done-when of issue 12: "cone/cone ends direct by hole punching within 10 s in at least 19
# of 20 attempts". `make soak` runs the 20; `make test` a short run (3, none may miss), each
# attempt ~30-45 s on the loaded machine, mostly `connect`'s UDP relay handshake.
ATTEMPTS = int(os.environ.get("HIGGS_PUNCH_ATTEMPTS", "3"))
PUNCH_WITHIN_S = 10.0
OBSERVE_S = 30.0  # how long the test waits to see `punched` at all


def attempt_punch(punch: System, client: Client) -> tuple[float, float, dict[str, Any]]:
    """A fresh session on the UDP relay, then the wait for ``punched``. Returns the seconds
    from the relay being up to ``punched`` by the daemon's own stamps (``connected_at``: the
    handshake through the relay; ``path_since``: the peer moved onto the punched path), the
    seconds until this test saw it in the status file (written every 2 s and on a change),
    and the last status. inf when it never punched."""
    if client.connected:
        client.disconnect()
    before = time.time()
    answer = connect(punch, client)
    up = time.monotonic()
    assert answer["mode"] == "udp_relay", f"{client.status()}\n{punch.lab.log_tails(30)}"
    status: dict[str, Any] = {}
    while time.monotonic() - up < OBSERVE_S:
        status = daemon_report(client)
        if status.get("mode") == "punched" and status["connected_at"] >= before:
            seen = time.monotonic() - up
            connected_at, since = float(status["connected_at"]), float(status["path_since"])
            # The stamps are the daemon's; this test's clock (the same host's) bounds them.
            assert before <= connected_at <= since <= time.time(), status
            assert client.status()["mode"] == "punched"  # and the CLI says so too
            return since - connected_at, seen, status
        time.sleep(0.1)
    return float("inf"), float("inf"), status


@pytest.mark.timeout(300 + 150 * ATTEMPTS)  # a fresh session took up to 130 s at load 26
def test_cone_cone_punches_within_10_s_in_19_of_20_attempts(punch: System) -> None:
    """Each attempt is a new session (a new interface, WireGuard port and relay lease, so new
    NAT mappings on both routers). At most one in 20 may take longer than 10 s. Each punched
    path really is direct (the client's WireGuard endpoint is the home router, traffic flows);
    the first is also checked the way a user would (whoami, bosonserver sessions)."""
    lab = punch.lab
    lab.set_nat("home_router", "cone")
    lab.set_nat("client_router", "cone")
    client = new_client(punch)
    took: list[float] = []
    for n in range(ATTEMPTS):
        punched_s, seen_s, status = attempt_punch(punch, client)
        took.append(punched_s)
        print(f"attempt {n + 1}/{ATTEMPTS}: punched {punched_s:.2f} s after the relay was up "
              f"(seen by the test after {seen_s:.2f} s)")  # fmt: skip
        if punched_s == float("inf"):
            print(f"  status: {status}")
            continue
        assert wg_endpoint(client).startswith(home_public(lab) + ":")
        assert pings(client.host, lab), f"attempt {n + 1}: no traffic on the punched path"
        if n == 0:
            assert status["public_endpoint"].startswith(lab.client_router.addr("wan0") + ":")
            assert lab.whoami(client.host)["ip"] == home_public(lab)

            def server_says_punched(session_id: str = status["session_id"]) -> bool:
                rows = [r for r in sessions(punch) if r["session_id"] == session_id]
                return bool(rows) and rows[0]["path"] == "punched"

            wait_until("bosonserver sessions to say punched", server_says_punched, 30)
            # The operator's nodes page says how the node is reached now (issue 15).
            assert "hole-punched (1 session)" in punch.server.admin_page("/admin/")
    within = [t for t in took if t <= PUNCH_WITHIN_S]
    finite = [t for t in took if t != float("inf")] or [float("nan")]
    median = statistics.median(took)
    print(f"cone/cone: punched within {PUNCH_WITHIN_S:g} s in {len(within)} of {ATTEMPTS}; "
          f"median {median:.2f} s [{min(finite):.2f}-{max(finite):.2f}]")  # fmt: skip
    allowed_misses = ATTEMPTS // 20
    assert len(within) >= ATTEMPTS - allowed_misses, (
        f"only {len(within)} of {ATTEMPTS} attempts punched within {PUNCH_WITHIN_S:g} s: {took}\n"
        + lab.log_tails(40)
    )


FALLBACK_WITHIN_S = 10.0  # issue 12: "if the direct path dies, fall back to the relay within 10 s"


def test_home_router_address_change_recovers_through_the_relay_then_punches_again(
    punch: System,
) -> None:
    """Issue 17 item 3: the home router's public address changes mid-session. The punched
    path dies; both ends notice (nothing received for 4 s), go back to the UDP relay with a
    fresh handshake, so the relay learns the node's new address, and traffic flows again
    within 10 s (issue 12); then a new punch, to the address the relay now observes, brings
    the session back onto a direct path."""
    lab = punch.lab
    lab.set_nat("home_router", "cone")
    lab.set_nat("client_router", "cone")
    client = new_client(punch)
    connect(punch, client)
    wait_until("the punched path", lambda: client.status()["mode"] == "punched", 20, 0.3)
    add_address(lab)
    try:
        _recover_from_the_address_change(punch, client)
    finally:
        # The lab is shared by the module (and a rerun of this test): put the old address back.
        restore_home_address(lab)


def _recover_from_the_address_change(punch: System, client: Client) -> None:
    lab = punch.lab
    # Pings every 100 ms from before the change: their longest unanswered run is how long
    # the session carried nothing (a ping waiting for its reply would blur it by up to 1 s).
    pinger = Pinger(client.host, lab.internet.ip, FALLBACK_WITHIN_S + 10)
    time.sleep(1.0)  # a few answered first: the gap starts at the change, not at ping's start
    snat_to_new_address(lab)
    moved = time.monotonic()
    try:
        wait_until(
            "traffic after the home address changed", lambda: pings(client.host, lab), 30, 0.2
        )
        back = daemon_report(client)
        back_on = f"{back.get('mode')} via {wg_endpoint(client)} ({back.get('path_why')})"
    finally:
        gap = pinger.longest_gap_s()
    recovered = time.monotonic() - moved
    assert lab.whoami(client.host)["ip"] == NEW_HOME_PUBLIC
    print(f"address change: no traffic for {gap:.1f} s (pings every {PING_EVERY_S:g} s), "
          f"then on {back_on}")  # fmt: skip
    assert gap <= FALLBACK_WITHIN_S, f"the relay carried the session only after {gap:.1f} s"
    wait_until(
        "a punched path to the new address",
        lambda: (
            client.status()["mode"] == "punched"
            and wg_endpoint(client).startswith(NEW_HOME_PUBLIC + ":")
        ),
        60 - recovered,
        0.5,
    )
    redirect = time.monotonic() - moved
    print(f"address change: punched again to {NEW_HOME_PUBLIC} after {redirect:.1f} s")
    assert redirect <= 60  # the relay within 10 s, then the next attempts (retry 8 s here)
    assert pings(client.host, lab)
