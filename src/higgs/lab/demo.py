"""``make demo``: the stock-WireGuard story in the lab, step by step.

A client behind its own NAT tunnels everything through a node behind a home NAT; the
internet host reports who called before (the client's router) and after (the home router).
Later issues replace :data:`STEPS` with the product's own story.
"""

from __future__ import annotations

import sys

from .errors import LabError
from .lab import Lab
from .stock import StockTunnel
from .story import Step, StoryContext, demo_main

__all__ = ["STEPS", "main"]


def _build(ctx: StoryContext) -> str:
    lab = Lab()
    ctx.lab = lab  # before building, so a half-built lab is torn down too
    lab.build()
    return (
        f"{len(lab.hosts)} namespaces {lab.names.stem}-*, built in {lab.timings['build']:.2f} s\n"
        f"internet {lab.internet.ip} (whoami HTTP, DNS example.test, iperf3, SMTP 25/587)\n"
        f"server {lab.server.ip}\n"
        f"home router {lab.home_router.ip} (NAT) -> node {lab.node.ip},"
        f" printer {lab.printer.ip}\n"
        f"client router {lab.client_router.ip} (NAT) -> client {lab.client.ip}"
    )


def _seen(lab: Lab, ip: object) -> str:
    names = {h.ip: h.role.replace("_", " ") for h in lab.hosts.values()}
    return f"{ip} ({names.get(str(ip), 'unknown')})"


def _before(ctx: StoryContext) -> str:
    lab = ctx.require_lab()
    ip = lab.whoami(lab.client)["ip"]
    ctx.data["before"] = _seen(lab, ip)
    if ip != lab.client_router.ip:
        raise LabError(f"expected the client router {lab.client_router.ip}, saw {ip}")
    return f"the internet host saw the client as {_seen(lab, ip)}"


def _node(ctx: StoryContext) -> str:
    lab = ctx.require_lab()
    tunnel = StockTunnel(lab)
    ctx.data["tunnel"] = tunnel
    tunnel.start_node()
    return (
        f"wireguard-go {tunnel.node_if} on the node, {tunnel.node_tunnel_ip}, masquerade out of"
        f" eth0;\nhome router forwards udp/{tunnel.config.port} to the node"
    )


def _tunnel(ctx: StoryContext) -> StockTunnel:
    tunnel = ctx.data["tunnel"]
    assert isinstance(tunnel, StockTunnel)
    return tunnel


def _client(ctx: StoryContext) -> str:
    tunnel = _tunnel(ctx)
    tunnel.start_client()
    tunnel.wait_handshake()
    return (
        f"wireguard-go {tunnel.client_if} on the client, endpoint {tunnel.endpoint},"
        f" all traffic via fwmark/table {tunnel.config.fwmark}; handshake done"
    )


def _after(ctx: StoryContext) -> str:
    lab = ctx.require_lab()
    ip = lab.whoami(lab.client)["ip"]
    ctx.data["after"] = _seen(lab, ip)
    if ip != lab.home_router.ip:
        raise LabError(f"expected the home router {lab.home_router.ip}, saw {ip}")
    return f"the internet host saw the client as {_seen(lab, ip)}"


def _dns(ctx: StoryContext) -> str:
    lab = ctx.require_lab()
    answers = lab.resolve(lab.client, "www.example.test")
    asked = [q.source for q in lab.wait_dns_queries("www.example.test")]
    if asked != [lab.home_router.ip]:
        raise LabError(f"expected the DNS query from {lab.home_router.ip}, the log says {asked}")
    return (
        f"www.example.test -> {', '.join(answers)};"
        f" the DNS server logged the query from {_seen(lab, asked[0])}"
    )


STEPS: list[Step] = [
    Step("Building the lab (namespaces, cables, NAT routers, services)", _build),
    Step("Asking the internet host who we are, without a tunnel", _before),
    Step("Starting WireGuard on the node behind the home router", _node),
    Step("Starting WireGuard on the client, full tunnel", _client),
    Step("Asking the internet host who we are, through the tunnel", _after),
    Step("Resolving a name through the tunnel", _dns),
]

SUMMARY = [
    "What the internet host saw:",
    "  before the tunnel: {before}",
    "  through the tunnel: {after}",
]


def main() -> int:
    return demo_main(
        "Higgs.net lab demo: stock WireGuard from a client to a node behind a home NAT",
        STEPS,
        SUMMARY,
    )


if __name__ == "__main__":
    sys.exit(main())
