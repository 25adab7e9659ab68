"""A mini topology per test module, built from namespaces of our own.

Node tests::

    client ns               node ns                                 internet ns
    c0 10.66.0.2/24 ------- t0 10.66.0.1/24 ("tunnel")
       fd66::2/64              fd66::1/64
                            u0 203.0.113.2/24 2001:db8:203::2/64 -- i0 203.0.113.10, ::10
                            u1 198.51.100.2/24 --------------------- i1 198.51.100.10
                            l0 192.168.77.1/24 -- lan ns l1 .50     lo 192.0.2.1, 192.0.2.2,
                                                                       10.200.0.1,
                                                                       169.254.169.254,
                                                                       2001:db8:192::1

Kill-switch tests: a client namespace with an uplink k0 and a "tunnel" kt0, both to a world
namespace holding the allowed endpoint 203.0.113.5 and other hosts; behind the client, a
"container" namespace (kc1 10.98.0.2/24, routed and masqueraded by the client, as Docker does).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from higgs.osnet.firewall import FirewallBackend, FirewallNames, IptablesBackend, NftBackend
from higgs.osnet.journal import Journal
from higgs.osnet.runner import SubprocessRunner

from .netns import Netns, World, normalise_ruleset, unique, veth

KINDS = ["nft", "iptables-nft", "iptables-legacy"]


@dataclass
class NodeWorld:
    world: World
    client: Netns
    node: Netns
    inet: Netns
    lan: Netns


@dataclass
class KillWorld:
    world: World
    client: Netns
    net: Netns
    container: Netns


def _have(kind: str) -> bool:
    tool = {"nft": "nft", "iptables-nft": "iptables-nft", "iptables-legacy": "iptables-legacy"}
    return shutil.which(tool[kind]) is not None


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    if not _have(value):
        pytest.skip(f"{value} is not installed here")
    return value


def make_backend(
    kind: str, names: FirewallNames, ns: Netns, journal: Journal | None = None
) -> FirewallBackend:
    runner = SubprocessRunner(netns=ns.name)
    if kind == "nft":
        return NftBackend(names, runner, journal)
    return IptablesBackend(
        names, runner, journal, flavour="nft" if kind.endswith("nft") else "legacy"
    )


def ruleset(kind: str, ns: Netns) -> str:
    """What `remove()` must leave exactly as it found it: the whole nftables ruleset (where
    iptables-nft keeps its tables too) and the iptables dumps, but for counters and comments.
    Only legacy tables that hold nothing are left out: legacy iptables creates them by merely
    listing them, and they cannot be deleted."""
    dumps = [ns.run("nft", "list", "ruleset").stdout]
    if kind != "nft":
        flavour = kind.split("-", 1)[1]
        dumps += [ns.run(f"{tool}-{flavour}-save").stdout for tool in ("iptables", "ip6tables")]
    legacy = kind == "iptables-legacy"
    return "\n".join(normalise_ruleset(d, drop_empty_tables=legacy) for d in dumps)


@pytest.fixture
def fw_names() -> FirewallNames:
    inst = unique("t")
    return FirewallNames(f"higgsnode_{inst}", f"HIGGSNODE_{inst.upper()}", f"higgs:node:{inst}")


@pytest.fixture(scope="module")
def node_world() -> Iterator[NodeWorld]:
    with ExitStack() as stack:
        world = World(stack)
        client, node, inet, lan = (world.ns(p) for p in ("hgfc", "hgfn", "hgfi", "hgfl"))
        veth(client, "c0", node, "t0")
        veth(node, "u0", inet, "i0")
        veth(node, "u1", inet, "i1")
        veth(node, "l0", lan, "l1")
        client.addr("c0", "10.66.0.2/24", "fd66::2/64")
        node.addr("t0", "10.66.0.1/24", "fd66::1/64")
        node.addr("u0", "203.0.113.2/24", "2001:db8:203::2/64")
        node.addr("u1", "198.51.100.2/24")
        node.addr("l0", "192.168.77.1/24")
        inet.addr("i0", "203.0.113.10/24", "2001:db8:203::10/64")
        inet.addr("i1", "198.51.100.10/24")
        inet.addr(
            "lo",
            "192.0.2.1/32",
            "192.0.2.2/32",
            "192.0.2.3/32",
            "10.200.0.1/32",
            "169.254.169.254/32",
            "2001:db8:192::1/128",
        )
        lan.addr("l1", "192.168.77.50/24")
        client.ip("route", "add", "default", "via", "10.66.0.1")
        client.ip("-6", "route", "add", "default", "via", "fd66::1")
        node.ip("route", "add", "default", "via", "203.0.113.10", "dev", "u0")
        node.ip("-6", "route", "add", "default", "via", "2001:db8:203::10", "dev", "u0")
        # A narrower path to one host: the MSS clamp must take it from the route's MTU.
        node.ip("route", "add", "192.0.2.2/32", "via", "203.0.113.10", "dev", "u0", "mtu", "1280")
        lan.ip("route", "add", "default", "via", "192.168.77.1")
        node.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        node.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        # The tests ask many refused questions at once; the kernel's ICMP error rate limit
        # would turn some refusals into timeouts (this namespace only).
        node.run("sysctl", "-qw", "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0")
        world.serve(
            inet,
            "inet",
            "tcp:192.0.2.1:80",
            "tcp:192.0.2.3:80",
            "tcp:192.0.2.1:25",
            "tcp:192.0.2.1:587",
            "tcp:192.0.2.2:80",
            "udp:192.0.2.1:53",
            "tcp:192.0.2.1:53",
            "tcp:10.200.0.1:80",
            "tcp:169.254.169.254:80",
            "tcp:[2001:db8:192::1]:80",
        )
        world.serve(lan, "lan", "tcp:192.168.77.50:80")
        world.serve(node, "node", "tcp:0.0.0.0:8080")
        world.serve(node, "fwd", "udp:10.66.0.1:5353", "tcp:10.66.0.1:5353")
        yield NodeWorld(world, client, node, inet, lan)


@pytest.fixture(scope="module")
def kill_world() -> Iterator[KillWorld]:
    with ExitStack() as stack:
        world = World(stack)
        client, net, box = world.ns("hgkc"), world.ns("hgkw"), world.ns("hgkb")
        veth(client, "k0", net, "k1")
        veth(client, "kt0", net, "kt1")
        veth(client, "kc0", box, "kc1")
        client.addr("kc0", "10.98.0.1/24")
        box.addr("kc1", "10.98.0.2/24")
        box.ip("route", "add", "default", "via", "10.98.0.1")
        client.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        # The container's NAT, in a table of the test's own (it is there before and after).
        client.run("nft", "-f", "-", input=(
            "table ip hgtest_box {\n"
            "\tchain post {\n"
            "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
            "\t\tip saddr 10.98.0.0/24 masquerade\n"
            "\t}\n"
            "}\n"
        ))  # fmt: skip
        client.addr("k0", "198.51.100.2/24", "2001:db8:51::2/64")
        net.addr("k1", "198.51.100.1/24", "2001:db8:51::1/64")
        client.addr("kt0", "10.99.0.2/24")
        net.addr("kt1", "10.99.0.1/24")
        net.addr("lo", "203.0.113.5/32", "203.0.113.6/32")
        client.ip("route", "add", "default", "via", "198.51.100.1")
        client.ip("-6", "route", "add", "default", "via", "2001:db8:51::1")
        world.serve(
            net,
            "world",
            "tcp:203.0.113.5:443",
            "tcp:203.0.113.5:80",
            "udp:203.0.113.5:51820",
            "tcp:203.0.113.6:80",
            "tcp:10.99.0.1:80",
            "tcp:[2001:db8:51::1]:80",
        )
        world.serve(client, "self", "tcp:127.0.0.1:9")
        yield KillWorld(world, client, net, box)


@pytest.fixture
def register() -> Iterator[Callable[[FirewallBackend], FirewallBackend]]:
    """Registers backends whose rules are removed after the test, pass or fail."""
    made: list[FirewallBackend] = []
    yield lambda b: made.append(b) or b  # type: ignore[func-returns-value]
    for backend in made:
        type(backend).sweep(backend.names, backend.runner)
