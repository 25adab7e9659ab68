"""The growth lab's plan (pure): the default lab with ``n`` client hosts on a bridge on the
client router's LAN, as tests/e2e/client_system.py's ``two_client_plan`` adds its second:
``client`` 10.0.2.10 (the default one), ``client2`` 10.0.2.11, ... ``client<n>`` 10.0.2.<9+n>.
"""

from __future__ import annotations

from ipaddress import IPv4Interface

from higgs.lab.plan import Bridge, Cable, HostPlan, LabPlan, default_plan

__all__ = ["MAX_CLIENTS", "client_role", "growth_plan"]

# 10.0.2.10 .. 10.0.2.59; the bound keeps a typo from building hundreds of namespaces.
MAX_CLIENTS = 50


def client_role(i: int) -> str:
    """The role of the ``i``-th client host (1-based): ``client``, ``client2``, ..."""
    return "client" if i == 1 else f"client{i}"


def growth_plan(n: int) -> LabPlan:
    if not 1 <= n <= MAX_CLIENTS:
        raise ValueError(f"clients must be 1..{MAX_CLIENTS}, not {n}")
    base = default_plan()
    hosts = dict(base.hosts)
    gateway = hosts["client"].gateway
    for i in range(2, n + 1):
        role = client_role(i)
        hosts[role] = HostPlan(role, (("eth0", IPv4Interface(f"10.0.2.{9 + i}/24")),), gateway)
    kept = [c for c in base.cables if (c.a, c.b) != ("client", "client_router")]
    ports = tuple(f"p-c{i}" for i in range(1, n + 1))
    cables = (
        *kept,
        *(Cable(client_role(i), "eth0", "client_router", f"p-c{i}") for i in range(1, n + 1)),
    )
    bridges = (*base.bridges, Bridge("client_router", "lan0", ports))
    return LabPlan(hosts=hosts, cables=cables, bridges=bridges)
