"""The reference tunnel built from stock tools only: wireguard-go, wg, ip, nft.

Client (fully tunnelled, policy routing as wg-quick does) -> home router's public address,
UDP port-forwarded to the node -> node (wireguard-go, ip_forward, masquerade out of its
uplink) -> internet. What the product must do at least as well; the benchmarks reuse it.

    with Lab() as lab, StockTunnel(lab) as tunnel:
        assert lab.whoami(lab.client)["ip"] == lab.home_router.ip
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Interface
from types import TracebackType
from typing import Any

from .errors import LabError
from .host import Host
from .lab import Lab
from .procs import LabProcess, stop_processes
from .wireguard import KeyPair, new_keypair, start_wireguard_go, wg_set, wg_show

__all__ = ["StockClient", "StockTunnel", "StockTunnelConfig", "full_tunnel_client"]

STOCK_TABLE = "hl_stock"
_NODE_ADDRESS = IPv4Interface("10.99.0.1/24")
_CLIENT_ADDRESS = IPv4Interface("10.99.0.2/32")


@dataclass(frozen=True)
class StockTunnelConfig:
    port: int = 51820
    node_address: IPv4Interface = _NODE_ADDRESS
    client_address: IPv4Interface = _CLIENT_ADDRESS
    # wg-quick uses the listen port as both fwmark and table id; so do we.
    fwmark: int = 51820
    mtu: int = 1420
    keepalive: int = 25


class StockTunnel:
    """A WireGuard tunnel from the lab's client to its node, set up like a human would."""

    def __init__(self, lab: Lab, config: StockTunnelConfig | None = None) -> None:
        self.lab = lab
        self.config = config or StockTunnelConfig()
        self.node_if = lab.ifname("wgn")
        self.client_if = lab.ifname("wgc")
        self.node_keys: KeyPair | None = None
        self.client_keys: KeyPair | None = None
        self.processes: list[LabProcess] = []
        self._up = False

    @property
    def endpoint(self) -> str:
        """Where the client sends its WireGuard packets: the home router's public address."""
        return f"{self.lab.home_router.ip}:{self.config.port}"

    @property
    def node_tunnel_ip(self) -> str:
        return str(self.config.node_address.ip)

    @property
    def client_tunnel_ip(self) -> str:
        return str(self.config.client_address.ip)

    def __enter__(self) -> StockTunnel:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self, *, handshake_timeout: float = 10.0) -> StockTunnel:
        """Bring the tunnel up and wait for the first handshake."""
        self.start_node()
        self.start_client()
        self.wait_handshake(timeout=handshake_timeout)
        return self

    def _keys(self) -> tuple[KeyPair, KeyPair]:
        if self.node_keys is None or self.client_keys is None:
            self.node_keys = new_keypair()
            self.client_keys = new_keypair()
        return self.node_keys, self.client_keys

    def start_node(self) -> None:
        """The node's half: wireguard-go, forwarding, masquerade, the home router's forward."""
        self._up = True
        node_keys, client_keys = self._keys()
        self._node_side(node_keys, client_keys)
        self.lab.forward_udp(self.config.port, to="node")

    def start_client(self) -> None:
        """The client's half: wireguard-go and wg-quick style full-tunnel policy routing."""
        self._up = True
        node_keys, client_keys = self._keys()
        self._client_side(client_keys, node_keys)

    def _node_side(self, own: KeyPair, peer: KeyPair) -> None:
        cfg, node = self.config, self.lab.node
        self.processes.append(start_wireguard_go(node, self.node_if))
        wg_set(
            node,
            self.node_if,
            "listen-port",
            str(cfg.port),
            "peer",
            peer.public,
            "allowed-ips",
            str(cfg.client_address.network),
            private_key=own.private,
        )
        uplink = node.plan.addresses[0][0]
        node.run(
            ["ip", "-batch", "-"],
            input=(
                f"addr add {cfg.node_address.with_prefixlen} dev {self.node_if}\n"
                f"link set {self.node_if} mtu {cfg.mtu} up\n"
            ),
        )
        node.sysctl("net.ipv4.ip_forward", 1)
        # The masquerade goes on the uplink, not on the WireGuard interface.
        node.nft(
            f"table ip {STOCK_TABLE} {{\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f'    ip saddr {cfg.node_address.network} oifname "{uplink}" masquerade\n'
            "  }\n"
            "}\n"
        )

    def _client_side(self, own: KeyPair, peer: KeyPair) -> None:
        cfg = self.config
        self.processes.append(
            full_tunnel_client(
                self.lab.client,
                self.client_if,
                own,
                peer_public=peer.public,
                endpoint=self.endpoint,
                address=str(cfg.client_address),
                mtu=cfg.mtu,
                fwmark=cfg.fwmark,
                keepalive=cfg.keepalive,
            )
        )

    def latest_handshake(self, side: str = "client") -> int:
        """Unix time of the last handshake seen by ``side`` (0 when none yet)."""
        host, ifname = (
            (self.lab.client, self.client_if) if side == "client" else (self.lab.node, self.node_if)
        )
        out = wg_show(host, ifname, "latest-handshakes").split()
        return int(out[1]) if len(out) >= 2 else 0

    def wait_handshake(self, *, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.latest_handshake("client") == 0:
            if time.monotonic() > deadline:
                raise LabError(
                    f"no WireGuard handshake between client and node within {timeout} s\n"
                    + self.lab.log_tails()
                )
            # A datagram into the tunnel makes WireGuard start a handshake now.
            with contextlib.closing(self.lab.client.socket(socket.AF_INET, socket.SOCK_DGRAM)) as s:
                s.sendto(b"hello", (self.node_tunnel_ip, 9))
            time.sleep(0.2)

    def down(self) -> None:
        """Undo the tunnel but keep the lab (idempotent; the lab's teardown also covers it)."""
        if not self._up:
            return
        self._up = False
        problems = stop_processes(self.processes)
        mark = self.config.fwmark
        self.lab.client.run(
            ["ip", "-force", "-batch", "-"],
            input=(
                f"rule del not fwmark {mark} table {mark}\n"
                "rule del table main suppress_prefixlength 0\n"
            ),
            check=False,
        )
        self.lab.node.run(["nft", "delete", "table", "ip", STOCK_TABLE], check=False)
        if problems:
            raise LabError("; ".join(problems))


def full_tunnel_client(
    host: Host,
    ifname: str,
    own: KeyPair,
    *,
    peer_public: str,
    endpoint: str,
    address: str,
    mtu: int,
    fwmark: int = 51820,
    keepalive: int = 25,
) -> LabProcess:
    """A stock WireGuard client in ``host``: wireguard-go, one peer for 0.0.0.0/0, and
    wg-quick's full-tunnel policy routing. Returns the wireguard-go process."""
    proc = start_wireguard_go(host, ifname)
    wg_set(
        host,
        ifname,
        "fwmark", str(fwmark),
        "peer", peer_public,
        "endpoint", endpoint,
        "allowed-ips", "0.0.0.0/0",
        "persistent-keepalive", str(keepalive),
        private_key=own.private,
    )  # fmt: skip
    # wg-quick's full tunnel: everything not marked by WireGuard itself goes to table
    # `fwmark`, whose default route is the tunnel; the main table still wins for anything
    # more specific than a default route (suppress_prefixlength 0).
    host.run(
        ["ip", "-batch", "-"],
        input=(
            f"addr add {address} dev {ifname}\n"
            f"link set {ifname} mtu {mtu} up\n"
            f"route add default dev {ifname} table {fwmark}\n"
            f"rule add not fwmark {fwmark} table {fwmark}\n"
            "rule add table main suppress_prefixlength 0\n"
        ),
    )
    host.sysctl("net.ipv4.conf.all.src_valid_mark", 1)
    return proc


class StockClient:
    """A stock WireGuard client configured from a ``POST /v1/routes`` answer (the JSON dict),
    the way a person would paste it into wg-quick: IPv4 full tunnel, to the route's direct
    endpoint (or ``endpoint``, e.g. the answer's ``udp_relay`` endpoint, docs/protocol.md §2.3).

        keys = new_keypair()
        answer = ...  # the route answer for keys.public
        with StockClient(lab, lab.client, answer, keys) as client:
            client.wait_handshake()
    """

    def __init__(
        self,
        lab: Lab,
        host: Host,
        route: Mapping[str, Any],
        keys: KeyPair,
        *,
        tag: str | None = None,
        fwmark: int = 51820,
        endpoint: str | None = None,
    ) -> None:
        wg = route["wireguard"]
        direct = route.get("direct") or {}
        endpoint = endpoint or direct.get("endpoint")
        if not endpoint:
            raise LabError("the route has no direct endpoint; a stock client cannot use the relay")
        self.lab = lab
        self.host = host
        self.route = dict(route)
        self.keys = keys
        self.ifname = lab.ifname(tag or f"w{host.role[-1] if host.role[-1].isdigit() else 'c'}")
        self.address: str = wg["address"]
        self.node_public: str = wg["node_public_key"]
        self.endpoint: str = endpoint
        self.mtu: int = int(wg["mtu"])
        self.dns: list[str] = list(wg.get("dns") or [])
        self.keepalive = int(wg.get("persistent_keepalive") or 25)
        self.fwmark = fwmark
        self.proc: LabProcess | None = None

    @property
    def tunnel_ip(self) -> str:
        return self.address.split("/")[0]

    def __enter__(self) -> StockClient:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self) -> StockClient:
        self.proc = full_tunnel_client(
            self.host,
            self.ifname,
            self.keys,
            peer_public=self.node_public,
            endpoint=self.endpoint,
            address=self.address,
            mtu=self.mtu,
            fwmark=self.fwmark,
            keepalive=self.keepalive,
        )
        return self

    def latest_handshake(self) -> int:
        out = wg_show(self.host, self.ifname, "latest-handshakes").split()
        return int(out[1]) if len(out) >= 2 else 0

    def wait_handshake(self, *, timeout: float = 15.0, poke: str | None = None) -> None:
        """Wait for the first handshake, sending a datagram into the tunnel (to ``poke``,
        default the first pushed DNS server) to start one."""
        target = poke or (self.dns[0] if self.dns else self.lab.internet.ip)
        deadline = time.monotonic() + timeout
        while self.latest_handshake() == 0:
            if time.monotonic() > deadline:
                raise LabError(
                    f"no WireGuard handshake from {self.host.role} to {self.endpoint} within "
                    f"{timeout} s\n" + self.lab.log_tails()
                )
            with contextlib.closing(self.host.socket(socket.AF_INET, socket.SOCK_DGRAM)) as s:
                s.sendto(b"hello", (target, 9))
            time.sleep(0.2)

    def down(self) -> None:
        """Stop wireguard-go (its interface goes with it) and remove the policy rules."""
        problems = stop_processes([self.proc]) if self.proc is not None else []
        self.proc = None
        self.host.run(
            ["ip", "-force", "-batch", "-"],
            input=(
                f"rule del not fwmark {self.fwmark} table {self.fwmark}\n"
                "rule del table main suppress_prefixlength 0\n"
                f"route flush table {self.fwmark}\n"
            ),
            check=False,
        )
        if problems:
            raise LabError("; ".join(problems))
