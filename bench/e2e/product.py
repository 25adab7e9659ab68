"""The product in the lab, started as a user starts it: bosonserver on the server host,
higgsnode behind the home NAT (port-forwarded, so direct works), higgsvpn on the client
behind its own NAT, ``higgsvpn connect --mode direct|relay``. The same recipe as
``higgs.lab.demo_product`` (the client engineer's demo), kept here so the benchmark does not
depend on the demo's story machinery.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from higgs.lab import Lab, LabError
from higgs.lab.procs import LabProcess
from higgs.lab.product import (
    API_PORT,
    NODE_PORT,
    RELAY_PORT,
    NodeProgram,
    ServerProgram,
    client_cli,
)
from higgs.lab.wait import wait_until

__all__ = ["API_PORT", "NODE_PORT", "RELAY_PORT", "NodeHandle", "product_tunnel"]


@dataclass
class NodeHandle:
    """The tunnel's higgsnode and the flags it was started with, for a restart (bench.connect
    kills it and starts it again on the same state directory)."""

    program: NodeProgram
    flags: tuple[str, ...]

    def restart(self) -> None:
        self.program.start(*self.flags)


def _wait(what: str, check: Any, timeout: float, every: float = 1.0) -> None:
    wait_until(what, check, timeout, every)


def relayed_datagrams(lab: Lab, url: str) -> float:
    text = lab.server.run(
        ["curl", "-sS", "--noproxy", "*", "--max-time", "10", f"{url}/metrics"], timeout=15
    ).stdout
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if re.match(r"^higgs_relay_datagrams_total", line)
    )


@contextlib.contextmanager
def product_tunnel(
    lab: Lab,
    mode: str,
    *,
    client_mode: str | None = None,
    client_settings: str = "",
    node_out: list[NodeHandle] | None = None,
) -> Iterator[Callable[..., str]]:
    """Server, node and client up, the client connected in ``mode``; all undone on exit.
    Yields the client's ``higgsvpn`` runner (``vpn("status", "--json")``).

    ``client_mode``: the client's ``--mode`` (default: ``relay`` for the UDP relay rows, so
    the path stays the UDP relay; ``auto`` lets it hole-punch, bench/punch).
    ``client_settings``: more lines for the client's ``higgsvpn.toml``. ``node_out``: the
    node's handle is appended to it.

    ``udp_relay`` / ``udp_relay_userspace``: the server runs its UDP relay (kernel forwarding,
    or the userspace forwarder), the node has no port forward, the client takes the UDP relay.
    """
    udp = mode.startswith("udp_relay")
    udp_flags = ["--udp-relay-address", lab.server.ip] if udp else []
    if mode == "udp_relay_userspace":
        udp_flags.append("--udp-relay-userspace")
    assert lab.workdir is not None
    # A directory of its own: the smoke brings several tunnels up, one after another, in one
    # lab, each with a fresh server database and node state.
    work = Path(tempfile.mkdtemp(prefix=f"product-{mode}-", dir=lab.workdir))
    server = ServerProgram(lab, work / "server")
    server_proc = server.start(timeout=60, args=udp_flags)
    with contextlib.ExitStack() as stack:
        # The next tunnel in this lab listens on the same ports.
        stack.callback(_stop, server_proc.popen)
        yield from _with_server(
            lab, mode, work, server, udp, client_mode, client_settings, node_out
        )


def _stop(popen: subprocess.Popen[bytes]) -> None:
    popen.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(30)


def _with_server(
    lab: Lab,
    mode: str,
    work: Path,
    server: ServerProgram,
    udp: bool,
    client_mode: str | None,
    client_settings: str,
    node_out: list[NodeHandle] | None = None,
) -> Iterator[Callable[..., str]]:
    url = server.url

    def server_cli(*args: str) -> str:
        return server.cli(*args, timeout=120)

    key = server_cli("enroll", "create").split()[-1]
    if not udp:
        lab.forward_udp(NODE_PORT)
    endpoint = [] if udp else ["--endpoint", f"{lab.home_router.ip}:{NODE_PORT}"]
    flags = (
        *("--server", url, "--enroll-key", key, "--listen-port", str(NODE_PORT)),
        *endpoint,
        *("--country", "DE", "--dns-upstream", lab.internet.ip),
    )
    program = NodeProgram(lab, work / "node", lab.ifname("n"))
    program.start(*flags)
    if node_out is not None:
        node_out.append(NodeHandle(program, flags))

    def node_proc() -> LabProcess:
        assert program.proc is not None
        return program.proc

    def online() -> bool:
        node = node_proc()
        if not node.alive():
            raise LabError("higgsnode exited:\n" + node.log_text()[-2000:])
        listing = json.loads(server_cli("nodes", "--json"))
        nodes = listing["nodes"] if isinstance(listing, dict) else listing
        return any(n.get("state") == "online" for n in nodes)

    resolv = Path("/etc/netns") / lab.client.ns / "resolv.conf"
    cfg = work / "higgsvpn.toml"

    def vpn(*args: str, check: bool = True) -> str:
        return client_cli(lab.client, cfg, *args, check=check, timeout=180).stdout

    connected = False
    try:
        _wait("the node to come online", online, 90, every=2.0)
        token = server_cli("client", "add", "bench").split()[-1]
        resolv.parent.mkdir(parents=True, exist_ok=True)
        resolv.write_text(f"nameserver {lab.client_router.ip}\n")
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w") as fh:
            fh.write(
                f'server_url = "{url}"\ntoken = "{token}"\n'
                f'state_dir = "{work / "client"}"\ninterface = "{lab.ifname("c")}"\n'
                f'resolv_conf = "{resolv}"\n{client_settings}'
            )
        relayed_before = relayed_datagrams(lab, url)
        connect_mode = client_mode or ("relay" if udp else mode)
        answer = json.loads(vpn("connect", "--json", "--mode", connect_mode))
        connected = True
        if udp and answer.get("mode") != "udp_relay":
            raise LabError(f"expected the UDP relay path, the client took {answer.get('mode')}")
        seen = lab.whoami(lab.client)["ip"]
        if seen != lab.home_router.ip:
            raise LabError(f"connected in {mode} mode but the internet host sees {seen}")
        relayed = relayed_datagrams(lab, url) - relayed_before
        if mode == "relay" and relayed <= 0:
            raise LabError("relay mode, but the relay carried no datagram")
        if mode != "relay" and relayed > 0:
            raise LabError(f"{mode} mode, but the WS relay carried {relayed:.0f} datagrams")
        yield vpn
    finally:
        if connected:
            with contextlib.suppress(Exception):
                vpn("disconnect", check=False)
        node = node_proc()
        if node.alive():
            node.popen.terminate()
            with contextlib.suppress(Exception):
                node.popen.wait(60)
        resolv.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            resolv.parent.rmdir()
