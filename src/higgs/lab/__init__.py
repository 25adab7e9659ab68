"""A small internet in network namespaces, for the end-to-end tests and the demo.

    from higgs.lab import Lab, StockTunnel

    with Lab() as lab:                      # ~0.3 s to build, torn down always
        lab.client.run(["ip", "route"])     # a command inside the client's namespace
        lab.whoami(lab.client)              # {"ip": "203.0.113.20", "port": ...}

See docs/lab.md for the topology and the address plan.
"""

from .errors import CommandError, LabError
from .host import Host
from .lab import DnsQuery, Download, Lab, leftovers_of_run, sweep_run
from .names import RunNames
from .procs import LabProcess
from .stock import StockTunnel, StockTunnelConfig
from .wireguard import KeyPair, new_keypair, start_wireguard_go, wg_set, wg_show

__all__ = [
    "CommandError",
    "DnsQuery",
    "Download",
    "Host",
    "KeyPair",
    "Lab",
    "LabError",
    "LabProcess",
    "RunNames",
    "StockTunnel",
    "StockTunnelConfig",
    "leftovers_of_run",
    "new_keypair",
    "start_wireguard_go",
    "sweep_run",
    "wg_set",
    "wg_show",
]
