"""The node's traffic shaping: the owner's settings turned into tc classes, kept per client.

The tc work lives in :mod:`higgs.osnet.shaping`; this module decides the plan from the settings
and keeps one class per connected client (called by :class:`~higgs.node.peers.PeerManager`
whenever the set of peers changes).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

from higgs.node.settings import NodeSettings
from higgs.osnet import shaping
from higgs.osnet.journal import Journal
from higgs.osnet.runner import Runner

__all__ = ["Shaper", "ifb_name", "plan_for"]

log = logging.getLogger(__name__)


def ifb_name(interface: str) -> str:
    """The IFB device that carries the upload direction of ``interface`` (≤ 15 chars)."""
    return ("ifb-" + interface)[:15]


def _kbit(mbit: float) -> int:
    return int(mbit * 1000)


def plan_for(
    settings: NodeSettings, tunnel_net_v6: ipaddress.IPv6Network | None = None
) -> shaping.ShapingPlan:
    """``tunnel_net_v6``: the clients' IPv6 prefix when the node forwards IPv6, so a client's
    IPv6 traffic counts against its own class too."""
    s = settings.shaping
    return shaping.ShapingPlan(
        tunnel_if=settings.interface,
        ifb_if=ifb_name(settings.interface),
        tunnel_net=settings.tunnel_subnet,
        tunnel_net_v6=tunnel_net_v6,
        down_kbit=_kbit(s.total_down_mbit),
        up_kbit=_kbit(s.total_up_mbit),
        per_client_kbit=_kbit(s.per_client_mbit),
        max_clients=settings.max_clients,
    )


class Shaper:
    def __init__(self, plan: shaping.ShapingPlan, journal: Journal, runner: Runner) -> None:
        self.plan = plan
        self._journal = journal
        self._runner = runner
        self._clients: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self.plan.shapes_down or self.plan.shapes_up

    def setup(self) -> None:
        shaping.setup(self.plan, self._journal, self._runner)

    def update(self, addresses: Iterable[str]) -> None:
        """Makes the per-client classes match the connected clients' addresses."""
        if not self.enabled:
            return
        after = {a.split("/")[0] for a in addresses}
        problems = shaping.apply_clients(self.plan, self._runner, self._clients, after)
        for problem in problems:
            log.warning("shaping: %s", problem)
        self._clients = after
