"""The rows of the e2e table: what carries the client's traffic, each built in a fresh lab.

A row is a context manager that takes a built lab and brings its tunnel up; the benchmark
measures while it is up. A fresh lab per row and round keeps rows from influencing each
other (no leftover routes, conntrack entries or processes of the previous row); the smoke
shares one lab between rows (it checks that rows come up, not their figures).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from higgs.lab import Lab, StockTunnel

__all__ = [
    "PLAIN",
    "PRODUCT_DIRECT",
    "PRODUCT_RELAY",
    "PRODUCT_UDP_RELAY",
    "PRODUCT_UDP_USERSPACE",
    "REFERENCE",
    "ROWS",
    "Row",
    "smoke_left_out",
    "smoke_order",
]

REFERENCE = "stock wireguard-go (reference)"
PLAIN = "no tunnel (NAT only)"
PRODUCT_DIRECT = "Higgs.net direct"
PRODUCT_RELAY = "Higgs.net relay"
PRODUCT_UDP_RELAY = "Higgs.net UDP relay (kernel)"
PRODUCT_UDP_USERSPACE = "Higgs.net UDP relay (userspace)"


@dataclass(frozen=True)
class Row:
    name: str
    up: Callable[[Lab], contextlib.AbstractContextManager[object]]
    # Checked before any lab is built; a reason means the row prints "not available".
    unavailable: Callable[[], str | None] = lambda: None


@contextlib.contextmanager
def _plain(lab: Lab) -> Iterator[None]:
    yield


@contextlib.contextmanager
def _stock(lab: Lab) -> Iterator[None]:
    with StockTunnel(lab):
        yield


def _product_missing() -> str | None:
    """Why the product rows cannot run in this build, or None."""
    missing = [
        f"{prog} ({module})"
        for prog, module in (
            ("bosonserver", "higgs.server.app"),
            ("higgsnode", "higgs.node.agent"),
            ("higgsvpn connect", "higgs.client.connect"),
        )
        if importlib.util.find_spec(module) is None
    ]
    if missing:
        return "not in this build yet: " + ", ".join(missing)
    return None


def _product(lab: Lab, mode: str) -> contextlib.AbstractContextManager[object]:
    from .product import product_tunnel

    return product_tunnel(lab, mode)


# The one product row the smoke brings up: starting bosonserver, higgsnode and higgsvpn is
# most of a row's cost, and the other modes are each brought up by their e2e tests
# (test_client_direct, test_client_relay, test_udp_relay).
SMOKE_PRODUCT_ROW = PRODUCT_UDP_RELAY
SMOKE_LEFT_OUT = f"not run by the smoke (it brings up one product row: {SMOKE_PRODUCT_ROW})"


def smoke_order() -> list[Row]:
    """The rows in the order the smoke runs them in one lab: the reference first (the row
    every other is compared with), then the plain path, then the product row."""
    return sorted(ROWS, key=lambda r: (r.name != REFERENCE, r.name == SMOKE_PRODUCT_ROW))


def smoke_left_out(row: Row) -> str | None:
    """Why the smoke does not run ``row`` (None: it does)."""
    product = row.unavailable is _product_missing
    return SMOKE_LEFT_OUT if product and row.name != SMOKE_PRODUCT_ROW else None


ROWS: tuple[Row, ...] = (
    Row(REFERENCE, _stock),
    Row(PRODUCT_DIRECT, lambda lab: _product(lab, "direct"), _product_missing),
    Row(PRODUCT_RELAY, lambda lab: _product(lab, "relay"), _product_missing),
    Row(PRODUCT_UDP_RELAY, lambda lab: _product(lab, "udp_relay"), _product_missing),
    Row(PRODUCT_UDP_USERSPACE, lambda lab: _product(lab, "udp_relay_userspace"), _product_missing),
    Row(PLAIN, _plain),
)
