"""A large download through the real higgsnode succeeds across a link with a smaller MTU
(issue 6 item 2): the home router's uplink carries 1400 bytes, less than WireGuard's packets
of a 1380-byte (or larger) tunnel MTU plus 60 bytes of overhead."""

from __future__ import annotations

import pytest

from higgs.lab.lab import Lab
from higgs.lab.product import Product
from higgs.lab.services.whoami import payload_sha256

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
