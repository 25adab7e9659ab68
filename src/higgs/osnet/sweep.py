"""The stateless sweep: deletes everything carrying our names, without reading the journal.

The last line of defence (STYLE.md practice 8) after the journal's replay: ``cleanup`` and
every start run it, and systemd runs it from ``ExecStopPost=``. It removes, for one
:class:`~higgs.osnet.names.OwnedNames`:

- the wireguard-go serving our interface — found as the owner of our control socket and
  stopped by PID (never by name pattern) — and the socket file;
- our interface;
- policy rules pointing at our table or matching our fwmark, and our
  ``suppress_prefixlength`` rule at our priority;
- every route in our table;
- whatever registered hooks remove (the firewall's nft table / iptables chains, tc qdiscs).

Safe to run at any time: what is not there is skipped. Sysctls are not touched — without the
journal we do not know their previous values.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from higgs.osnet import netlink, procs, routes, undo
from higgs.osnet.errors import OsnetError
from higgs.osnet.names import OwnedNames
from higgs.osnet.runner import Runner, SubprocessRunner

__all__ = ["SweepError", "SweepHook", "SweepReport", "register_hook", "sweep"]

log = logging.getLogger(__name__)

SweepHook = Callable[[OwnedNames, Runner, "str | None"], list[str]]
"""``hook(names, runner, netns) -> descriptions of what it removed``; raises on failure."""

_HOOKS: dict[str, SweepHook] = {}


def register_hook(name: str, hook: SweepHook) -> None:
    """Adds a sweep step (e.g. ``"nftables"``); registering the same function again is fine."""
    if name in _HOOKS and _HOOKS[name] is not hook:
        raise ValueError(f"sweep hook {name!r} is already registered")
    _HOOKS[name] = hook


class SweepError(OsnetError):
    def __init__(self, failures: list[tuple[str, BaseException]]) -> None:
        self.failures = failures
        super().__init__(
            "the sweep could not remove everything:\n"
            + "\n".join(f"  - {what}: {exc}" for what, exc in failures)
        )


@dataclass
class SweepReport:
    removed: list[str] = field(default_factory=list)
    failures: list[tuple[str, BaseException]] = field(default_factory=list)

    def raise_for_failures(self) -> None:
        if self.failures:
            raise SweepError(self.failures)


def _is_ours(rule: routes.Rule, names: OwnedNames) -> bool:
    return (
        rule.table == names.table_id
        or rule.fwmark == names.fwmark
        or (rule.priority in names.rule_priorities and rule.suppress_prefixlength is not None)
    )


def sweep(
    names: OwnedNames, *, runner: Runner | None = None, netns: str | None = None
) -> SweepReport:
    """Removes everything named ``names`` in ``netns`` (every step runs; see the report)."""
    run = runner if runner is not None else SubprocessRunner()
    report = SweepReport()

    def step(what: str, action: Callable[[], list[str]]) -> None:
        try:
            removed = action()
        except netlink.NamespaceNotFound:
            return  # nothing of ours can be in a namespace that does not exist
        except Exception as exc:  # every step runs; failures are reported together
            log.warning("sweep: %s failed: %s", what, exc)
            report.failures.append((what, exc))
            return
        for item in removed:
            log.info("sweep: removed %s", item)
        report.removed += removed

    def wireguard_go() -> list[str]:
        removed = []
        for pid, start in procs.socket_owners(names.wg_socket):
            if procs.stop_process(pid, start):
                removed.append(f"wireguard-go pid {pid} ({names.interface})")
        if names.wg_socket.exists():
            names.wg_socket.unlink(missing_ok=True)
            removed.append(str(names.wg_socket))
        return removed

    def interface() -> list[str]:
        present = netlink.call(lambda ipr: ipr.link_lookup(ifname=names.interface), netns)
        if not present:
            return []
        undo.INTERFACE_DELETE.run(
            undo.InterfaceDelete(names.interface, netns), undo.UndoContext(run)
        )
        return [f"interface {names.interface}"]

    def rules() -> list[str]:
        removed = []
        for rule in routes.list_rules(netns=netns):
            if _is_ours(rule, names):
                routes.delete_rule(rule, netns=netns)
                removed.append(rule.describe())
        return removed

    def table() -> list[str]:
        removed = []
        for route in routes.routes_in_table(names.table_id, netns=netns):
            routes.delete_route(route, netns=netns)
            removed.append(route.describe())
        return removed

    step("wireguard-go", wireguard_go)
    step("interface", interface)
    step("policy rules", rules)
    step("routing table", table)
    for hook_name, hook in _HOOKS.items():
        step(hook_name, functools.partial(hook, names, run, netns))
    return report
