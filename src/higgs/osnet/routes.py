"""Routes and policy rules through netlink (pyroute2), journaled, plus wg-quick's full tunnel.

Adding is journaled before it happens and records the exact spec to delete; a route or rule
that is already there is not ours, so it is neither re-added nor journaled (undo only what
you changed). Deleting treats "not there" as success.

:func:`full_tunnel` is wg-quick's trick for sending everything through WireGuard while the
tunnel's own packets still leave by the normal default route::

    ip route add default dev WG table T          # all traffic ... (T = names.table_id)
    ip rule add not fwmark M table T             # ... that WireGuard itself did not mark
    ip rule add table main suppress_prefixlength 0   # but more specific main routes win
    sysctl net.ipv4.conf.all.src_valid_mark=1    # so rp_filter accepts replies by mark
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from higgs.osnet import netlink, sysctl, undo
from higgs.osnet.changes import ChangeLog
from higgs.osnet.errors import OsnetError
from higgs.osnet.names import OwnedNames

__all__ = [
    "MAIN_TABLE",
    "ROUTE_DELETE",
    "RULE_DELETE",
    "Route",
    "RouteError",
    "Rule",
    "add_route",
    "add_rule",
    "delete_route",
    "delete_rule",
    "full_tunnel",
    "list_rules",
    "route_exists",
    "route_get",
    "route_undo",
    "routes_in_table",
    "rule_exists",
    "rule_undo",
]

MAIN_TABLE = 254
Family = Literal[4, 6]
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_FIB_RULE_INVERT = 0x2
_NO_SUPPRESS = 0xFFFFFFFF  # what the kernel reports for "no suppress_prefixlength"


class RouteError(OsnetError):
    """A route or policy rule cannot be added or read."""


@dataclass(frozen=True)
class Route:
    dst: str  # CIDR; "0.0.0.0/0" or "::/0" for a default route
    dev: str | None = None
    gateway: str | None = None
    table: int = MAIN_TABLE
    metric: int | None = None

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.dst, strict=False)

    @property
    def family(self) -> Family:
        return 4 if self.network.version == 4 else 6

    def describe(self) -> str:
        parts = [f"route {self.network}"]
        if self.gateway:
            parts.append(f"via {self.gateway}")
        if self.dev:
            parts.append(f"dev {self.dev}")
        if self.table != MAIN_TABLE:
            parts.append(f"table {self.table}")
        if self.metric is not None:
            parts.append(f"metric {self.metric}")
        return " ".join(parts)


@dataclass(frozen=True)
class Rule:
    priority: int
    table: int
    family: Family = 4
    fwmark: int | None = None
    invert: bool = False  # "not fwmark M"
    suppress_prefixlength: int | None = None

    def describe(self) -> str:
        parts = [f"rule {self.priority}:"]
        if self.fwmark is not None:
            parts.append(f"{'not ' if self.invert else ''}fwmark {self.fwmark:#x}")
        parts.append(f"lookup {'main' if self.table == MAIN_TABLE else self.table}")
        if self.suppress_prefixlength is not None:
            parts.append(f"suppress_prefixlength {self.suppress_prefixlength}")
        return f"{' '.join(parts)} (IPv{self.family})"


# --- routes -------------------------------------------------------------------------------


def _route_kwargs(ipr: Any, route: Route) -> dict[str, Any]:
    net = route.network
    kwargs: dict[str, Any] = {
        "dst": str(net.network_address),
        "dst_len": net.prefixlen,
        "family": _AF[route.family],
        "table": route.table,
    }
    if route.dev is not None:
        found = ipr.link_lookup(ifname=route.dev)
        if not found:
            raise FileNotFoundError(route.dev)
        kwargs["oif"] = found[0]
    if route.gateway is not None:
        kwargs["gateway"] = route.gateway
    if route.metric is not None:
        kwargs["priority"] = route.metric
    return kwargs


def route_exists(route: Route, *, netns: str | None = None) -> bool:
    def look(ipr: Any) -> bool:
        try:
            want = _route_kwargs(ipr, route)
        except FileNotFoundError:
            return False
        for r in ipr.route("dump", family=want["family"], table=route.table):
            if (
                r["dst_len"] == want["dst_len"]
                and (r.get("dst") or str(route.network.network_address)) == want["dst"]
                and ("oif" not in want or r.get("oif") == want["oif"])
                and ("gateway" not in want or r.get("gateway") == want["gateway"])
                and ("priority" not in want or (r.get("priority") or 0) == want["priority"])
            ):
                return True
        return False

    return netlink.call(look, netns)


def add_route(journal: ChangeLog, route: Route, *, netns: str | None = None) -> bool:
    """Adds ``route`` (journaled first). Returns False when it was already there (then it is
    not ours and nothing is journaled)."""
    if route_exists(route, netns=netns):
        return False
    entry = journal.record(route.describe(), route_undo(route, netns))
    try:
        netlink.call(lambda ipr: ipr.route("add", **_route_kwargs(ipr, route)), netns)
    except FileNotFoundError as exc:
        journal.forget(entry)
        raise RouteError(f"cannot add {route.describe()}: no interface {route.dev}") from exc
    except netlink.NetlinkError as exc:
        journal.forget(entry)  # a netlink add is atomic: nothing was made
        if exc.code == errno.EEXIST:
            return False
        raise RouteError(f"cannot add {route.describe()}: {exc.args[-1]}") from exc
    except BaseException:
        journal.forget(entry)
        raise
    return True


def delete_route(route: Route, *, netns: str | None = None) -> None:
    """Deletes ``route``; already gone (or its device or namespace gone) is fine."""

    def delete(ipr: Any) -> None:
        try:
            ipr.route("del", **_route_kwargs(ipr, route))
        except (netlink.NetlinkError, FileNotFoundError) as exc:
            if not netlink.is_not_found(exc):
                raise

    with contextlib.suppress(netlink.NamespaceNotFound):
        netlink.call(delete, netns)


@dataclass(frozen=True)
class RouteUndo:
    """A :class:`Route` to delete, and its namespace."""

    dst: str
    dev: str | None = None
    gateway: str | None = None
    table: int = MAIN_TABLE
    metric: int | None = None
    netns: str | None = None


def route_undo(route: Route, netns: str | None) -> undo.Undo:
    return ROUTE_DELETE.record(RouteUndo(**asdict(route), netns=netns))


def _undo_route(params: RouteUndo, ctx: undo.UndoContext) -> None:
    route = Route(params.dst, params.dev, params.gateway, params.table, params.metric)
    delete_route(route, netns=params.netns)


ROUTE_DELETE = undo.UndoOp("route_delete", RouteUndo, _undo_route)


def routes_in_table(table: int, *, netns: str | None = None) -> list[Route]:
    """Every route (v4 and v6) in ``table``, e.g. ours for the sweep."""

    def dump(ipr: Any) -> list[Route]:
        names = {link["index"]: link.get("ifname") for link in ipr.link("dump")}
        out = []
        for family, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            for r in ipr.route("dump", family=family, table=table):
                out.append(
                    Route(
                        dst=f"{r.get('dst') or any_addr}/{r['dst_len']}",
                        dev=names.get(r.get("oif")),
                        gateway=r.get("gateway"),
                        table=table,
                        metric=r.get("priority"),
                    )
                )
        return out

    return netlink.call(dump, netns)


def route_get(dst: str, *, netns: str | None = None) -> str | None:
    """The interface the kernel would send a packet for ``dst`` out of (``ip route get``)."""

    def get(ipr: Any) -> str | None:
        try:
            found = ipr.route("get", dst=str(ipaddress.ip_address(dst)))
        except netlink.NetlinkError as exc:
            if exc.code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return None
            raise
        oif = found[0].get("oif") if found else None
        if oif is None:
            return None
        links = ipr.link("get", index=oif)
        return str(links[0].get("ifname")) if links else None

    return netlink.call(get, netns)


# --- rules --------------------------------------------------------------------------------


def _rule_kwargs(rule: Rule) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "family": _AF[rule.family],
        "priority": rule.priority,
        "table": rule.table,
    }
    if rule.fwmark is not None:
        kwargs["fwmark"] = rule.fwmark
    if rule.invert:
        kwargs["flags"] = _FIB_RULE_INVERT
    if rule.suppress_prefixlength is not None:
        # pyroute2 spells the attribute FRA_SUPPRESS_PREFIXLEN.
        kwargs["suppress_prefixlen"] = rule.suppress_prefixlength
    return kwargs


def list_rules(*, netns: str | None = None) -> list[Rule]:
    def dump(ipr: Any) -> list[Rule]:
        out = []
        for family in (4, 6):
            for r in ipr.rule("dump", family=_AF[family]):
                suppress = r.get("suppress_prefixlen")
                out.append(
                    Rule(
                        priority=r.get("priority") or 0,
                        table=r.get("table") or r["table"],
                        family=4 if family == 4 else 6,
                        fwmark=r.get("fwmark"),
                        invert=bool(r["flags"] & _FIB_RULE_INVERT),
                        suppress_prefixlength=None
                        if suppress in (None, _NO_SUPPRESS)
                        else suppress,
                    )
                )
        return out

    return netlink.call(dump, netns)


def rule_exists(rule: Rule, *, netns: str | None = None) -> bool:
    return rule in list_rules(netns=netns)


def add_rule(journal: ChangeLog, rule: Rule, *, netns: str | None = None) -> bool:
    """Adds ``rule`` (journaled first); False when an identical rule was already there."""
    if rule_exists(rule, netns=netns):
        return False
    entry = journal.record(rule.describe(), rule_undo(rule, netns))
    try:
        netlink.call(lambda ipr: ipr.rule("add", **_rule_kwargs(rule)), netns)
    except netlink.NetlinkError as exc:
        journal.forget(entry)
        if exc.code == errno.EEXIST:
            return False
        raise RouteError(f"cannot add {rule.describe()}: {exc.args[-1]}") from exc
    except BaseException:
        journal.forget(entry)
        raise
    return True


def delete_rule(rule: Rule, *, netns: str | None = None) -> None:
    """Deletes ``rule``; already gone (or its namespace gone) is fine."""

    def delete(ipr: Any) -> None:
        try:
            ipr.rule("del", **_rule_kwargs(rule))
        except netlink.NetlinkError as exc:
            if not netlink.is_not_found(exc):
                raise

    with contextlib.suppress(netlink.NamespaceNotFound):
        netlink.call(delete, netns)


@dataclass(frozen=True)
class RuleUndo:
    """A :class:`Rule` to delete, and its namespace."""

    priority: int
    table: int
    family: Family = 4
    fwmark: int | None = None
    invert: bool = False
    suppress_prefixlength: int | None = None
    netns: str | None = None


def rule_undo(rule: Rule, netns: str | None) -> undo.Undo:
    return RULE_DELETE.record(RuleUndo(**asdict(rule), netns=netns))


def _undo_rule(params: RuleUndo, ctx: undo.UndoContext) -> None:
    rule = Rule(
        params.priority,
        params.table,
        params.family,
        params.fwmark,
        params.invert,
        params.suppress_prefixlength,
    )
    delete_rule(rule, netns=params.netns)


RULE_DELETE = undo.UndoOp("rule_delete", RuleUndo, _undo_rule)


# --- wg-quick's full tunnel ---------------------------------------------------------------


def full_tunnel(
    journal: ChangeLog,
    names: OwnedNames,
    *,
    families: Iterable[Family] = (4, 6),
    netns: str | None = None,
) -> None:
    """Sends all traffic of ``families`` through ``names.interface`` except WireGuard's own
    (marked with ``names.fwmark``, which the interface must be configured with)."""
    for family in families:
        default = "0.0.0.0/0" if family == 4 else "::/0"
        add_route(journal, Route(default, dev=names.interface, table=names.table_id), netns=netns)
        suppress, fwmark_prio = names.rule_priorities
        add_rule(
            journal,
            Rule(fwmark_prio, names.table_id, family, fwmark=names.fwmark, invert=True),
            netns=netns,
        )
        add_rule(journal, Rule(suppress, MAIN_TABLE, family, suppress_prefixlength=0), netns=netns)
        if family == 4:
            sysctl.set(journal, "net.ipv4.conf.all.src_valid_mark", "1", netns=netns)
