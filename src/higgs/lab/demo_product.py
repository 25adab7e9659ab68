"""``make demo``: the Higgs.net product story in the lab, step by step, with the real programs.

bosonserver runs on the server host; a node owner enrolls higgsnode on a PC behind a home
NAT; a user behind their own NAT connects with higgsvpn, first through the relay, then
directly through the home router's port forward. The internet host reports who called before,
during and after; the lab's DNS server shows where name lookups came from. Every program is
started exactly as a user would start it (its command line), in its own namespace.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from .errors import LabError
from .host import Host
from .lab import Lab
from .procs import LabProcess
from .product import NODE_PORT, RELAY_PORT, NodeProgram, ServerProgram, client_cli
from .story import Step, StoryContext, demo_main
from .wait import wait_until

__all__ = ["STEPS", "main"]

DNS_NAME = "www.example.test"


def _seen(lab: Lab, ip: object) -> str:
    names = {h.ip: h.role.replace("_", " ") for h in lab.hosts.values()}
    return f"{ip} ({names.get(str(ip), 'unknown')})"


def _work(ctx: StoryContext) -> Path:
    work = ctx.data.get("work")
    if not isinstance(work, Path):
        lab = ctx.require_lab()
        assert lab.workdir is not None
        work = lab.workdir / "product"
        work.mkdir(mode=0o700)
        ctx.data["work"] = work
    return work


def _server_program(ctx: StoryContext) -> ServerProgram:
    server = ctx.data.get("server")
    if not isinstance(server, ServerProgram):
        server = ServerProgram(ctx.require_lab(), _work(ctx) / "server")
        ctx.data["server"] = server
    return server


def _server_cli(ctx: StoryContext, *args: str) -> str:
    return _server_program(ctx).cli(*args)


def _client_host(ctx: StoryContext) -> Host:
    return ctx.require_lab().client


def _vpn(ctx: StoryContext, *args: str, check: bool = True) -> Any:
    cfg = _work(ctx) / "higgsvpn.toml"
    return client_cli(_client_host(ctx), cfg, *args, check=check, timeout=120)


def _wait(what: str, check: Any, timeout: float) -> None:
    wait_until(what, check, timeout, 1.0)


# --- steps -----------------------------------------------------------------------------------


def _build(ctx: StoryContext) -> str:
    lab = Lab()
    ctx.lab = lab  # before building, so a half-built lab is torn down too
    lab.build()
    return (
        f"{len(lab.hosts)} namespaces {lab.names.stem}-*, built in {lab.timings['build']:.2f} s\n"
        f"internet {lab.internet.ip} (whoami HTTP, DNS example.test that logs who asks)\n"
        f"server {lab.server.ip} (public)\n"
        f"home router {lab.home_router.ip} (NAT) -> node PC {lab.node.ip}\n"
        f"client router {lab.client_router.ip} (NAT) -> user's machine {lab.client.ip}"
    )


def _before(ctx: StoryContext) -> str:
    lab = ctx.require_lab()
    ip = lab.whoami(lab.client)["ip"]
    ctx.data["before"] = _seen(lab, ip)
    if ip != lab.client_router.ip:
        raise LabError(f"expected the client router {lab.client_router.ip}, saw {ip}")
    return f"the internet host sees the user as {_seen(lab, ip)}"


def _server(ctx: StoryContext) -> str:
    server = _server_program(ctx)
    ctx.data["server_url"] = server.url
    server.start(timeout=30)
    return f"bosonserver serve: API {server.url}, relay ws://{server.host.ip}:{RELAY_PORT}, SQLite"


def _node(ctx: StoryContext) -> str:
    lab = ctx.require_lab()
    key = _server_cli(ctx, "enroll", "create").split()[-1]
    lab.forward_udp(NODE_PORT)
    endpoint = f"{lab.home_router.ip}:{NODE_PORT}"
    node = NodeProgram(lab, _work(ctx) / "node", lab.ifname("n"))
    proc = node.start(
        *("--server", str(ctx.data["server_url"]), "--enroll-key", key),
        *("--listen-port", str(NODE_PORT), "--endpoint", endpoint),
        *("--country", "DE", "--region", "Lab", "--dns-upstream", lab.internet.ip),
    )
    ctx.data["node_proc"] = proc

    def online() -> bool:
        if not proc.alive():
            raise LabError("higgsnode exited:\n" + proc.log_text()[-2000:])
        listing = json.loads(_server_cli(ctx, "nodes", "--json"))
        nodes = listing["nodes"] if isinstance(listing, dict) else listing
        return any(n.get("state") == "online" for n in nodes)

    _wait("the node to come online", online, 60)
    return (
        "bosonserver enroll create -> hge_… (one use)\n"
        f"higgsnode start on the node PC; the home router forwards udp/{NODE_PORT} to it\n"
        f"node online, direct endpoint {endpoint}"
    )


def _remove_resolv(resolv: Path) -> None:
    resolv.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        resolv.parent.rmdir()


def _client(ctx: StoryContext) -> str:
    lab = ctx.require_lab()
    token = _server_cli(ctx, "client", "add", "alice").split()[-1]
    ns_dir = Path("/etc/netns") / lab.client.ns
    ns_dir.mkdir(parents=True, exist_ok=True)
    resolv = ns_dir / "resolv.conf"
    resolv.write_text(f"nameserver {lab.client_router.ip}\n")
    ctx.data["resolv"] = resolv
    # `ip netns exec` bind-mounts this file as the namespace's /etc/resolv.conf; deleting the
    # namespace does not remove it, so it goes when the demo ends, whichever way it ends.
    atexit.register(_remove_resolv, resolv)
    work = _work(ctx)
    cfg = work / "higgsvpn.toml"
    fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w") as fh:
        fh.write(
            f'server_url = "{ctx.data["server_url"]}"\ntoken = "{token}"\n'
            f'state_dir = "{work / "client"}"\ninterface = "{lab.ifname("c")}"\n'
            f'resolv_conf = "{resolv}"\n'
        )
    nodes = _vpn(ctx, "nodes").stdout.rstrip()
    return f"bosonserver client add alice -> hgc_…\n$ higgsvpn nodes\n{nodes}"


def _connect(mode: str) -> Any:
    def step(ctx: StoryContext) -> str:
        lab = ctx.require_lab()
        out = _vpn(ctx, "connect", "--mode", mode).stdout.strip()
        ip = lab.whoami(lab.client)["ip"]
        ctx.data[mode] = _seen(lab, ip)
        if ip != lab.home_router.ip:
            raise LabError(f"expected the home router {lab.home_router.ip}, saw {ip}")
        status = _vpn(ctx, "status").stdout.rstrip()
        return f"$ higgsvpn connect --mode {mode}\n{out}\n$ higgsvpn status\n{status}\n" + (
            f"the internet host sees the user as {_seen(lab, ip)}"
        )

    return step


def _relayed(ctx: StoryContext) -> float:
    lab = ctx.require_lab()
    text = lab.server.run(
        ["curl", "-sS", "--noproxy", "*", f"{ctx.data['server_url']}/metrics"], timeout=15
    ).stdout
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if re.match(r"^higgs_relay_datagrams_total", line)
    )


def _dns(ctx: StoryContext) -> str:
    lab = ctx.require_lab()
    out = lab.client.run(["getent", "ahostsv4", DNS_NAME], check=False, timeout=20).stdout
    answers = sorted({line.split()[0] for line in out.splitlines() if line.strip()})
    if not answers:
        raise LabError(f"{DNS_NAME} did not resolve through the tunnel")
    asked = sorted({q.source for q in lab.wait_dns_queries(DNS_NAME)})
    if lab.client_router.ip in asked:
        raise LabError(f"DNS leaked: the query came from the client router ({asked})")
    return (
        f"{DNS_NAME} -> {', '.join(answers)} via the node's resolver;"
        f" the DNS server logged the query from {', '.join(_seen(lab, a) for a in asked)}"
    )


def _settled_relay_count(ctx: StoryContext) -> float:
    """The relay's datagram count once the closed session's last datagrams (the node's
    WireGuard sends until its peer is removed) have passed: two reads a second apart agree."""
    last = _relayed(ctx)
    for _ in range(10):
        time.sleep(1.0)
        now = _relayed(ctx)
        if now == last:
            return now
        last = now
    raise LabError("the relay still carries datagrams 10 s after the disconnect")


def _disconnect(ctx: StoryContext) -> str:
    out = _vpn(ctx, "disconnect").stdout.strip()
    return f"$ higgsvpn disconnect\n{out}"


def _disconnect_from_relay(ctx: StoryContext) -> str:
    out = _disconnect(ctx)
    ctx.data["relayed_before_direct"] = _settled_relay_count(ctx)
    return f"{out}\nrelay datagrams so far: {ctx.data['relayed_before_direct']:.0f}"


def _direct_check(ctx: StoryContext) -> str:
    now = _relayed(ctx)
    before = ctx.data["relayed_before_direct"]
    assert isinstance(before, float)
    if now != before:
        raise LabError(f"the relay carried {now - before:.0f} datagrams in direct mode")
    return f"relay datagrams: still {now:.0f}: direct traffic never touched the server"


def _after(ctx: StoryContext) -> str:
    lab = ctx.require_lab()
    _disconnect(ctx)
    ip = lab.whoami(lab.client)["ip"]
    ctx.data["after"] = _seen(lab, ip)
    if ip != lab.client_router.ip:
        raise LabError(f"expected the client router {lab.client_router.ip}, saw {ip}")
    probe = _client_host(ctx).run(["ip", "link", "show", "dev", lab.ifname("c")], check=False)
    if probe.returncode == 0:
        raise LabError("the tunnel interface is still there")
    return f"$ higgsvpn disconnect\nthe internet host sees the user as {_seen(lab, ip)} again"


def _stop(ctx: StoryContext) -> str:
    proc = ctx.data.get("node_proc")
    if isinstance(proc, LabProcess) and proc.alive():
        proc.popen.terminate()
        proc.popen.wait(60)
    resolv = ctx.data.get("resolv")
    if isinstance(resolv, Path):
        _remove_resolv(resolv)
    return "higgsnode stopped (it undid its own changes); bosonserver stops with the lab"


STEPS: list[Step] = [
    Step("Building the lab (namespaces, cables, NAT routers, services)", _build),
    Step("Asking the internet host who the user is, without Higgs.net", _before),
    Step("Starting bosonserver on the public server", _server),
    Step("Enrolling higgsnode on the PC behind the home router", _node),
    Step("Adding a user and listing the nodes they may use", _client),
    Step("Connecting through the relay", _connect("relay")),
    Step("Resolving a name through the tunnel (no DNS leak)", _dns),
    Step("Disconnecting", _disconnect_from_relay),
    Step("Connecting directly through the home router's port forward", _connect("direct")),
    Step("Checking the relay carried none of the direct traffic", _direct_check),
    Step("Disconnecting: the user's machine is as before", _after),
    Step("Stopping the node", _stop),
]

SUMMARY = [
    "What the internet host saw:",
    "  before Higgs.net:      {before}",
    "  through the relay:     {relay}",
    "  directly to the node:  {direct}",
    "  after disconnecting:   {after}",
]


def main() -> int:
    return demo_main(
        "Higgs.net demo: a VPN whose exit node is a PC behind a home router",
        STEPS,
        SUMMARY,
    )


if __name__ == "__main__":
    sys.exit(main())
