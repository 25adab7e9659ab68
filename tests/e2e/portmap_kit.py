"""What the port-mapping tests (IPv4 mappings and IPv6 pinholes) read of a node and do to it."""

from __future__ import annotations

import json
from typing import Any

from higgs.lab.product import Product
from higgs.lab.wait import wait_until

__all__ = ["node_status", "port_mapping", "restart_after_kill"]


def node_status(product: Product) -> dict[str, Any]:
    out = product.node_cli("status", "--json").stdout
    try:
        return dict(json.loads(out).get("status") or {})
    except ValueError:
        return {}


def port_mapping(product: Product) -> dict[str, Any]:
    return dict(node_status(product).get("port_mapping") or {})


def restart_after_kill(product: Product) -> None:
    """Starts the killed node again, mapping nothing itself (``off``): its start undoes the
    journal first. Returns once the new run is online (the server still lists the killed run
    as online, so that is no sign)."""
    product.start_node(direct=False, flags=["--port-mapping", "off"])
    wait_until(
        "the new run online",
        lambda: node_status(product).get("server", {}).get("state") == "online",
        60,
        0.5,
    )
