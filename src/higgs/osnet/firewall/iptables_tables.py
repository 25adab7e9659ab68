"""The nftables tables ``iptables-nft`` creates on first use: noting ours, deleting them again.

``iptables-nft`` keeps its rules in ordinary nftables tables named after the iptables ones
(``table ip filter``, ``table ip6 nat``, ...). It creates a table, with the built-in chains a
rule needs, the first time a rule goes into it — and never deletes it: after our chains and
jumps are gone, an empty ``table ip filter { chain FORWARD { ... policy accept; } }`` stays, so
``nft list ruleset`` and ``iptables-save`` no longer match what the host had before us.

So the backend notes, before its first rule, which of the tables its plan uses do not exist
yet (:func:`absent`), journals them with its undo, and on removal deletes each of those that is
empty again (:func:`delete_if_empty`): no rule, set or other object, no chain but the built-in
ones, every policy still ``accept``. Anything else means someone else uses the table now — it
stays and the log says why.

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

__all__ = ["BUILTIN_CHAINS", "NftTable", "absent", "delete_if_empty", "nft_family", "parse"]

log = logging.getLogger(__name__)

# (nft family, table name), e.g. ("ip6", "nat")
NftTable = tuple[str, str]

# The chains iptables-nft creates per table: nothing else may be in a table we delete.
BUILTIN_CHAINS: dict[str, frozenset[str]] = {
    "filter": frozenset({"INPUT", "FORWARD", "OUTPUT"}),
    "nat": frozenset({"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}),
    "mangle": frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}),
    "raw": frozenset({"PREROUTING", "OUTPUT"}),
    "security": frozenset({"INPUT", "FORWARD", "OUTPUT"}),
}
_FAMILIES = ("ip", "ip6")
_TABLE_LINE = re.compile(r"^table (\S+) (\S+)$", re.M)


def nft_family(family: int) -> str:
    """The nftables family iptables-nft (4) or ip6tables-nft (6) writes to."""
    return "ip" if family == 4 else "ip6"


def parse(items: Iterable[Any]) -> list[NftTable]:
    """Journal data back to tables, keeping only iptables' own: a damaged or edited journal
    must not make us delete some other table."""
    out: list[NftTable] = []
    for item in items:
        if (
            isinstance(item, (list, tuple))
            and len(item) == 2
            and item[0] in _FAMILIES
            and item[1] in BUILTIN_CHAINS
        ):
            out.append((str(item[0]), str(item[1])))
    return out


def absent(runner: Runner, tables: Iterable[NftTable]) -> set[NftTable] | None:
    """Which of ``tables`` do not exist now; None when nft cannot tell (not installed, no
    permission) — then nothing will be deleted later either."""
    try:
        result = runner.run(["nft", "list", "tables"], check=False)
    except CommandError as exc:
        log.debug("cannot list nftables tables: %s", exc)
        return None
    if not result.ok:
        log.debug("cannot list nftables tables: %s", result.stderr.strip())
        return None
    present = {(m[1], m[2]) for m in _TABLE_LINE.finditer(result.stdout)}
    return {t for t in tables if t not in present}


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


def delete_if_empty(runner: Runner, table: NftTable) -> str | None:
    """Deletes ``table`` if it is empty (see the module docstring). Returns what was deleted
    (None when absent or kept); raises CommandError when nft fails otherwise."""
    family, name = table
    result = runner.run(["nft", "-j", "list", "table", family, name], check=False)
    if not result.ok:
        if "No such file or directory" in result.stderr:
            return None  # already gone: deleting twice is fine
        raise CommandError(result.argv, result.returncode, result.stderr)
    try:
        items = json.loads(result.stdout)["nftables"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CommandError(result.argv, result.returncode, f"unreadable output: {exc}") from exc
    why = _why_busy(table, items)
    if why is not None:
        log.info(
            "keeping nftables table %s %s (created for our iptables rules): %s", family, name, why
        )
        return None
    # Between this look and the delete, another program could add to the table; nft has no
    # "delete if empty" (deleting a chain takes its rules along too), so the window is kept
    # as short as two commands.
    try:
        runner.run(["nft", "delete", "table", family, name])
    except CommandError as exc:
        if exc.not_found:
            return None
        raise
    return f"nft table {family} {name} (created by iptables-nft for our rules)"
