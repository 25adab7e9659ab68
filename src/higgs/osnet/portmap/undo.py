"""The journal's undo for a router mapping: ``{"op": "portmap_delete", ...}``.

Recorded before the router is asked (write-ahead), so a run killed between asking and
recording the answer still has its mapping removed at the next start or ``cleanup``.

=================  =====================================================================
param              meaning
=================  =====================================================================
``method``         ``pcp``, ``natpmp`` or ``upnp``
``gateway``        the router asked (the default-route gateway at the time)
``internal_ip``    the node's address the mapping points at (PCP's client address)
``internal_port``  the WireGuard port
``external_port``  UPnP: the external port to delete
``nonce``          PCP: hex of the nonce that created the mapping (PCP refuses others)
``location``       UPnP: the device description URL (no discovery needed to delete)
``pinhole``        UPnP: an IPv6 pinhole (WANIPv6FirewallControl), not a port mapping
``pinhole_id``     UPnP pinhole: the router's UniqueID; -1 until its answer was journaled
=================  =====================================================================

A router that no longer answers (the node moved to another network, the router restarted)
counts as done: the mapping expires by its own bounded lifetime, and a node must not refuse to
start because an old router is gone. An explicit refusal is logged, not fatal, for the same
reason.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from higgs.osnet import undo as undo_ops
from higgs.osnet.portmap import udp, upnp
from higgs.osnet.portmap.types import Method

__all__ = ["OP", "UNDO", "PortmapUndo", "portmap_delete"]

log = logging.getLogger(__name__)

OP = "portmap_delete"


def portmap_delete(
    method: Method,
    gateway: str,
    internal_ip: str,
    internal_port: int,
    *,
    external_port: int = 0,
    nonce: str = "",
    location: str = "",
    pinhole: bool = False,
    pinhole_id: int | None = None,
) -> dict[str, Any]:
    return UNDO.record(
        PortmapUndo(
            method,
            gateway,
            internal_ip,
            internal_port,
            external_port,
            nonce,
            location,
            pinhole,
            -1 if pinhole_id is None else pinhole_id,
        )
    )


@dataclass(frozen=True)
class PortmapUndo:
    """The parameters in the table above."""

    method: Method
    gateway: str
    internal_ip: str
    internal_port: int
    external_port: int = 0
    nonce: str = ""
    location: str = ""
    pinhole: bool = False
    pinhole_id: int = -1


def _op_portmap_delete(params: PortmapUndo, ctx: undo_ops.UndoContext) -> None:
    method, gateway, port = params.method, params.gateway, params.internal_port
    if method is Method.NATPMP:
        done = udp.natpmp_delete_blocking(gateway, port)
    elif method is Method.PCP:
        done = udp.pcp_delete_blocking(
            gateway, params.internal_ip, port, bytes.fromhex(params.nonce)
        )
    elif params.pinhole:
        done = _upnp_pinhole_delete(params)
    else:
        done = _upnp_delete(params.location, params.external_port)
    if not done:
        log.warning(
            "the router did not confirm the removal of our port mapping; it expires by its "
            "lifetime",
            extra={"method": method.value, "gateway": gateway},
        )


def _upnp_delete(location: str, external_port: int) -> bool:
    if not location:
        return False  # killed before discovery found the device: nothing was asked
    try:
        # Undo runs outside the agent's event loop (a worker thread or the cleanup CLI).
        asyncio.run(asyncio.wait_for(upnp.upnp_delete(location, external_port), 10))
    except Exception as exc:  # the router's SOAP fault for "no such entry" lands here too
        log.info("UPnP delete: %s: %s", type(exc).__name__, exc)
        return False
    return True


def _upnp_pinhole_delete(params: PortmapUndo) -> bool:
    if not params.location:
        return False
    known = params.pinhole_id if params.pinhole_id >= 0 else None
    try:
        asyncio.run(
            asyncio.wait_for(
                upnp.upnp_pinhole_delete(
                    params.location, params.internal_ip, params.internal_port, known
                ),
                10,
            )
        )
    except Exception as exc:
        log.info("UPnP pinhole delete: %s: %s", type(exc).__name__, exc)
        return False
    return True


UNDO = undo_ops.UndoOp(OP, PortmapUndo, _op_portmap_delete)
