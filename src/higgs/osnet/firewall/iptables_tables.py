"""The nftables tables and chains ``iptables-nft`` creates on first use: noting ours, deleting
them again.

``iptables-nft`` keeps its rules in ordinary nftables tables named after the iptables ones
(``table ip filter``, ``table ip6 nat``, ...). It creates a table, and in it each built-in chain
a rule needs, the first time a rule goes there — and never deletes them: after our chains and
jumps are gone, an empty ``table ip filter { chain FORWARD { ... policy accept; } }`` stays, so
``nft list ruleset`` and ``iptables-save`` no longer match what the host had before us. The
same holds for a built-in chain added to a table that was there already (``chain INPUT`` in a
``table ip filter`` that had only ``FORWARD``).

So the backend notes, before its first rule, which of the tables and built-in chains its plan
uses do not exist yet (:func:`missing`), journals them with its undo, and on removal deletes
each that is empty again (:func:`delete_table_if_empty`, :func:`delete_chain_if_empty`): no
rule, set or other object, no chain but the built-in ones, every policy still ``accept``.
Anything else means someone else uses it now — it stays and the log says why.

``iptables-legacy`` needs none of this: its tables live in the kernel's x_tables, appear on
first look and cannot be deleted (nor do they show in ``nft list ruleset``).

Deletion needs the ``nft`` command (``iptables-nft`` offers no way to delete a table). Without
it nothing is noted, and the empty tables stay as before.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import Any

from higgs.osnet.errors import CommandError
from higgs.osnet.runner import Runner

__all__ = [
    "BUILTIN_CHAINS",
    "NftChain",
    "NftTable",
    "delete_chain_if_empty",
    "delete_table_if_empty",
    "missing",
    "nft_family",
    "parse_chains",
    "parse_tables",
]

log = logging.getLogger(__name__)

# (nft family, table name), e.g. ("ip6", "nat")
NftTable = tuple[str, str]
# (nft family, table name, built-in chain name), e.g. ("ip", "filter", "FORWARD")
NftChain = tuple[str, str, str]

# The chains iptables-nft creates per table: nothing else may be in a table we delete.
BUILTIN_CHAINS: dict[str, frozenset[str]] = {
    "filter": frozenset({"INPUT", "FORWARD", "OUTPUT"}),
    "nat": frozenset({"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}),
    "mangle": frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}),
    "raw": frozenset({"PREROUTING", "OUTPUT"}),
    "security": frozenset({"INPUT", "FORWARD", "OUTPUT"}),
}
_FAMILIES = ("ip", "ip6")
_TABLE_LINE = re.compile(r"^table (\S+) (\S+) \{$")
_CHAIN_LINE = re.compile(r"^\tchain (\S+) \{$")


def nft_family(family: int) -> str:
    """The nftables family iptables-nft (4) or ip6tables-nft (6) writes to."""
    return "ip" if family == 4 else "ip6"


def _ours(item: Any, size: int) -> bool:
    return (
        isinstance(item, (list, tuple))
        and len(item) == size
        and item[0] in _FAMILIES
        and item[1] in BUILTIN_CHAINS
        and (size == 2 or item[2] in BUILTIN_CHAINS[item[1]])
    )


def parse_tables(items: Iterable[Any]) -> set[NftTable]:
    """Journal data back to tables, keeping only iptables' own: a damaged or edited journal
    must not make us delete some other table."""
    return {(str(i[0]), str(i[1])) for i in items if _ours(i, 2)}


def parse_chains(items: Iterable[Any]) -> set[NftChain]:
    """Journal data back to built-in chains (only those, as :func:`parse_tables`)."""
    return {(str(i[0]), str(i[1]), str(i[2])) for i in items if _ours(i, 3)}


def missing(
    runner: Runner, wanted: Iterable[NftChain]
) -> tuple[set[NftTable], set[NftChain]] | None:
    """Of the ``wanted`` built-in chains: the tables that do not exist now (with all their
    chains), and the chains missing from tables that do. None when nft cannot tell (not
    installed, no permission) — then nothing will be deleted later either."""
    try:
        result = runner.run(["nft", "list", "chains"], check=False)
    except CommandError as exc:
        log.debug("cannot list nftables chains: %s", exc)
        return None
    if not result.ok:
        log.debug("cannot list nftables chains: %s", result.stderr.strip())
        return None
    # The listing names every table, empty ones too, each followed by its chains.
    tables: set[NftTable] = set()
    chains: set[NftChain] = set()
    table: NftTable | None = None
    for line in result.stdout.splitlines():
        if m := _TABLE_LINE.match(line):
            table = (m[1], m[2])
            tables.add(table)
        elif (m := _CHAIN_LINE.match(line)) and table is not None:
            chains.add((*table, m[1]))
    new_tables = {(f, t) for f, t, _ in wanted if (f, t) not in tables}
    new_chains = {c for c in wanted if c[:2] in tables and c not in chains}
    return new_tables, new_chains


def _why_busy(table: NftTable, items: list[dict[str, Any]]) -> str | None:
    """Why ``table`` (its ``nft -j list table`` items) is not empty; None when it is."""
    builtin = BUILTIN_CHAINS[table[1]]
    for item in items:
        ((kind, body),) = item.items()
        if kind in ("metainfo", "table"):
            continue
        if kind != "chain":
            return f"it holds a {kind}"
        name = body.get("name")
        if name not in builtin or "hook" not in body:
            return f"it holds the chain {name}"
        if body.get("policy", "accept") != "accept":
            return f"the policy of {name} is now {body.get('policy')}"
    return None


def _list(runner: Runner, what: list[str]) -> list[dict[str, Any]] | None:
    """``nft -j list <what>`` as items; None when it does not exist."""
    result = runner.run(["nft", "-j", "list", *what], check=False)
    if not result.ok:
        if "No such file or directory" in result.stderr:
            return None  # already gone: deleting twice is fine
        raise CommandError(result.argv, result.returncode, result.stderr)
    try:
        items: list[dict[str, Any]] = json.loads(result.stdout)["nftables"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CommandError(result.argv, result.returncode, f"unreadable output: {exc}") from exc
    return items


def _delete(runner: Runner, what: list[str]) -> bool:
    # Between the look and the delete another program could add to it; nft has no "delete
    # if empty" (deleting a chain takes its rules along too), so the window is kept as short
    # as two commands.
    try:
        runner.run(["nft", "delete", *what])
    except CommandError as exc:
        if exc.not_found:
            return False
        raise
    return True


def delete_chain_if_empty(runner: Runner, chain: NftChain) -> str | None:
    """Deletes the built-in ``chain`` if it holds no rule and still accepts. Returns what was
    deleted (None when absent or kept); raises CommandError when nft fails otherwise."""
    family, table, name = chain
    items = _list(runner, ["chain", family, table, name])
    if items is None:
        return None
    why = _why_busy((family, table), items)
    if why is not None:
        log.info(
            "keeping nftables chain %s %s %s (created for our iptables rules): %s",
            family,
            table,
            name,
            why,
        )
        return None
    if not _delete(runner, ["chain", family, table, name]):
        return None
    return f"nft chain {family} {table} {name} (created by iptables-nft for our rules)"


def delete_table_if_empty(runner: Runner, table: NftTable) -> str | None:
    """Deletes ``table`` if it is empty (see the module docstring). Returns what was deleted
    (None when absent or kept); raises CommandError when nft fails otherwise."""
    family, name = table
    items = _list(runner, ["table", family, name])
    if items is None:
        return None
    why = _why_busy(table, items)
    if why is not None:
        log.info(
            "keeping nftables table %s %s (created for our iptables rules): %s", family, name, why
        )
        return None
    if not _delete(runner, ["table", family, name]):
        return None
    return f"nft table {family} {name} (created by iptables-nft for our rules)"
