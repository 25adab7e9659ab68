"""A large download through the real higgsnode succeeds across a link with a smaller MTU
(issue 6 item 2): the home router's uplink carries 1400 bytes, less than WireGuard's packets
of a 1380-byte (or larger) tunnel MTU plus 60 bytes of overhead -- with the router's ICMP
errors (path-MTU discovery works), and without them (a black hole: only a tunnel MTU from the
path-MTU probe gets through)."""

from __future__ import annotations

import pytest

from higgs.lab.errors import CommandError
from higgs.lab.lab import Lab
from higgs.lab.product import Product
from higgs.lab.services.whoami import payload_sha256
from higgs.lab.stock import StockTunnel, StockTunnelConfig
from higgs.osnet.mtu import probe_path_mtu, tunnel_mtu
from higgs.osnet.runner import SubprocessRunner

pytestmark = [pytest.mark.e2e, pytest.mark.root]

SMALL = 1400
SIZE = 20 << 20


def test_large_download_across_a_smaller_mtu_link(lab: Lab) -> None:
    lab.set_mtu("home_router", "wan0", SMALL)
    product = Product(lab)
    try:
        product.start_server()
        product.provision("client")
        product.start_node()
        product.wait_node_online()
        client = product.connect_stock(lab.client)
        # Bigger than the narrow link once WireGuard's 60 bytes are added: the path must cope.
        assert client.mtu + 60 > SMALL
        got = lab.download(lab.client, SIZE)
    except Exception as exc:
        exc.add_note("process logs:\n" + lab.log_tails(40))
        raise
    finally:
        product.stop_node()
    assert got.nbytes == SIZE
    assert got.sha256 == payload_sha256(SIZE)
    print(
        f"{SIZE >> 20} MiB in {got.seconds:.1f} s with tunnel MTU {client.mtu} over a {SMALL} link"
    )


BLACK_HOLE = (
    "table ip hl_blackhole {\n"
    "  chain output {\n"
    "    type filter hook output priority 0; policy accept;\n"
    "    icmp type destination-unreachable icmp code frag-needed drop\n"
    "  }\n"
    "}\n"
)


@pytest.mark.parametrize("how", ["configured", "probed-by-the-node"])
def test_black_hole_path_needs_the_probed_mtu(lab: Lab, how: str) -> None:
    """The home router's uplink is 1400 bytes and the router swallows its ICMP errors, so
    nobody learns the path MTU: packets that do not fit just vanish. With the tunnel MTU
    computed from a path-MTU probe (osnet.mtu), the download gets through -- whether the
    owner probed and configured ``mtu``, or the node probes its ``mtu_probe_target`` itself
    (here the lab's internet host) at start."""
    lab.set_mtu("home_router", "wan0", SMALL)
    lab.home_router.nft(BLACK_HOLE)
    if how == "configured":
        probed = probe_path_mtu(lab.internet.ip, SubprocessRunner(netns=lab.node.ns), attempts=1)
        assert probed == SMALL
        mtu = tunnel_mtu(lab.mtu("node", "eth0"), ("udp4",), path_mtu=probed).mtu
        config = f"mtu = {mtu}\n"
    else:
        mtu = SMALL - 60  # what the node must find: the narrow link minus WireGuard over IPv4
        config = f'mtu_probe_target = "{lab.internet.ip}"\n'
    product = Product(lab)
    try:
        product.start_server()
        product.provision("client")
        product.start_node(config=config)
        product.wait_node_online()
        client = product.connect_stock(lab.client)
        assert client.mtu == mtu  # the node tells its clients the MTU it uses
        got = lab.download(lab.client, SIZE, timeout=60)
    except Exception as exc:
        exc.add_note("process logs:\n" + lab.log_tails(40))
        raise
    finally:
        product.stop_node()
    assert got.nbytes == SIZE
    assert got.sha256 == payload_sha256(SIZE)


def test_the_black_hole_is_real_for_a_tunnel_with_the_usual_mtu(lab: Lab) -> None:
    """The control: a stock WireGuard tunnel with the common 1420-byte MTU over the same black
    hole moves nothing (its 1480-byte packets are dropped without a word)."""
    lab.set_mtu("home_router", "wan0", SMALL)
    lab.home_router.nft(BLACK_HOLE)
    with StockTunnel(lab, StockTunnelConfig(mtu=1420)):
        assert lab.whoami(lab.client)["ip"] == lab.home_router.ip  # small packets pass
        with pytest.raises(CommandError, match="exited 28"):  # curl: operation timed out
            lab.download(lab.client, 2 << 20, timeout=8)
