"""Port mapping on the home router (PCP, NAT-PMP, UPnP-IGD): the router is a host we change,
so this lives in the OS layer, and every mapping is journaled with its undo
(:mod:`higgs.osnet.portmap.undo`) before the router is asked."""

from higgs.osnet.portmap import undo
from higgs.osnet.portmap.types import METHODS, Method, PortMapError, PortMapping
from higgs.osnet.portmap.udp import natpmp_map, pcp_map, pcp_new_nonce
from higgs.osnet.portmap.upnp import upnp_map

__all__ = [
    "METHODS",
    "Method",
    "PortMapError",
    "PortMapping",
    "natpmp_map",
    "pcp_map",
    "pcp_new_nonce",
    "undo",
    "upnp_map",
]
