"""The node's rules put back when another program removes them (issue 17, item 4).

A firewall manager's reload, ``nft flush ruleset`` or an ``iptables-restore`` on the owner's
PC would otherwise leave the node running without NAT or owner protection until its next
restart: clients' traffic stops, or worse, reaches the owner's LAN. The watch itself is
osnet's (:class:`higgs.osnet.firewall.watch.RuleWatch`); this module only ties it to the
node's host and settings.
"""

from __future__ import annotations

from higgs.node.host import NodeHost
from higgs.osnet.firewall.base import FirewallBackend
from higgs.osnet.firewall.watch import RuleWatch

__all__ = ["node_rule_watch"]


def node_rule_watch(host: NodeHost) -> RuleWatch | None:
    """The watch over the rules :meth:`NodeHost.apply_firewall` applied (None: disabled,
    or no rules yet)."""
    if not host.settings.firewall_watch or host.firewall is None:
        return None
    if not isinstance(host.firewall, FirewallBackend):
        # A host seam's stand-in (unit tests): it has no kernel rules to watch.
        return None
    return RuleWatch(host.firewall, what="node", poll_s=host.settings.firewall_check_s)
