"""The iptables backend: chains of ours filled by `iptables-restore --noflush`, one jump each.

Works with either flavour: ``iptables-nft`` (Debian's default) or ``iptables-legacy``. Rules of
both flavours coexist in the kernel without seeing each other's chains, so the flavour must be
the one the host's own firewall uses — that is what ``iptables`` points to (its ``--version``
says ``nf_tables`` or ``legacy``), unless configured.

Every command passes ``-w``: the legacy flavour takes a machine-wide lock, shared by every
network namespace, and other programs may hold it briefly.

The nft flavour creates nftables tables (``table ip filter``, ...) and built-in chains for the
first rule that needs them and never deletes them: those it had to create for us are journaled
and deleted again once empty (:mod:`.iptables_tables`), so the host's ruleset ends as it was.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from higgs.osnet.changes import ChangeLog
from higgs.osnet.errors import CommandError
from higgs.osnet.runner import Runner

from . import iptables_render, iptables_tables
from .base import UNDO, FirewallBackend, FirewallError, FirewallStatus, FirewallUndo
from .iptables_render import ChainSet, Jump
from .iptables_tables import NftChain, NftTable
from .plan import FirewallNames, Plan

__all__ = [
    "Flavour",
    "IptablesBackend",
    "Tools",
    "detect_flavour",
    "flavour_works",
    "parse_status",
]

Flavour = Literal["nft", "legacy", "plain"]
_WAIT = ["-w", "10"]
_TABLES = ("filter", "nat")


@dataclass(frozen=True, slots=True)
class Tools:
    """The four commands of one flavour."""

    flavour: Flavour

    def _name(self, base: str) -> str:
        return base if self.flavour == "plain" else f"{base}-{self.flavour}"

    def iptables(self, family: int) -> str:
        return self._name("iptables" if family == 4 else "ip6tables")

    def restore(self, family: int) -> str:
        return self._name("iptables" if family == 4 else "ip6tables") + "-restore"


def _split_rules(text: str) -> list[list[str]]:
    return [shlex.split(line) for line in text.splitlines() if line.strip()]


def parse_status(names: FirewallNames, saves: Mapping[tuple[int, str], str]) -> FirewallStatus:
    """Reads ``-S`` output per (family, table) for our chains."""
    prefix = f"{names.chain_prefix}-"
    masq: list[tuple[str, str]] = []
    dns: list[str] = []
    mss = kill = applied = False
    for (_family, _table), text in saves.items():
        for argv in _split_rules(text):
            if len(argv) < 2 or not argv[1].startswith(prefix):
                continue
            applied = True
            chain = argv[1]
            if "MASQUERADE" in argv and "-o" in argv and "-s" in argv:
                masq.append((argv[argv.index("-s") + 1], argv[argv.index("-o") + 1]))
            if "--to-destination" in argv and "53" in argv:
                dns.append(argv[argv.index("--to-destination") + 1])
            if "TCPMSS" in argv:
                mss = True
            if chain.endswith("-OUT"):
                kill = True
    return FirewallStatus(
        "iptables",
        applied=applied,
        masquerade=tuple(dict.fromkeys(masq)),
        dns_redirect=tuple(dict.fromkeys(dns)),
        mss_clamp=mss,
        kill_switch=kill,
    )


class IptablesBackend(FirewallBackend):
    name = "iptables"

    def __init__(
        self,
        names: FirewallNames,
        runner: Runner,
        journal: ChangeLog | None = None,
        *,
        flavour: Flavour | None = None,
    ) -> None:
        super().__init__(names, runner, journal)
        self.tools = Tools(flavour or detect_flavour(runner))
        # nftables tables and built-in chains iptables-nft had to create for our rules
        # (deleted again when empty)
        self._created_tables: set[NftTable] = set()
        self._created_chains: set[NftChain] = set()
        self._nft_based: bool | None = None

    # --- probing ---------------------------------------------------------------------------

    @classmethod
    def is_supported(cls, runner: Runner) -> bool:
        return flavour_works(runner, detect_flavour(runner))

    # --- running ---------------------------------------------------------------------------

    def _ipt(self, family: int, *args: str, check: bool = True) -> str:
        argv = [self.tools.iptables(family), *_WAIT, *args]
        return self.runner.run(argv, check=check).stdout

    def _restore(self, family: int, script: str) -> None:
        argv = [self.tools.restore(family), *_WAIT, "--noflush"]
        try:
            self.runner.run(argv, input=script)
        except CommandError as exc:
            raise FirewallError(
                f"{argv[0]} refused our rules for {self.names.chain_prefix}: {exc}"
            ) from exc

    def _has_jump(self, family: int, jump: Jump) -> bool:
        argv = [self.tools.iptables(family), *_WAIT, "-t", jump.table, "-C", jump.builtin]
        return self.runner.run([*argv, *jump.spec()], check=False).ok

    def _tables(self, family: int, runner: Runner | None = None) -> tuple[str, ...]:
        """The tables that can hold rules of ours. Merely listing a legacy table makes the
        kernel create it, so for legacy only the tables that already exist are looked at: a
        sweep or a status check must not change the host."""
        if self.tools.flavour != "legacy":
            return _TABLES
        proc = "/proc/net/ip_tables_names" if family == 4 else "/proc/net/ip6_tables_names"
        result = (runner or self.runner).run(["cat", proc], check=False)
        present = set(result.stdout.split()) if result.ok else set()
        return tuple(t for t in _TABLES if t in present)

    def _list(self, family: int, table: str, runner: Runner | None = None) -> str:
        result = (runner or self.runner).run(
            [self.tools.iptables(family), *_WAIT, "-t", table, "-S"], check=False
        )
        # A table the kernel cannot provide (no nat module) holds nothing of ours.
        return result.stdout if result.ok else ""

    # --- applying --------------------------------------------------------------------------

    def _makes_nft_tables(self) -> bool:
        """Whether our iptables command writes nftables tables (the nft flavour)."""
        if self._nft_based is None:
            if self.tools.flavour == "plain":
                try:
                    out = self.runner.run(["iptables", "--version"], check=False).stdout
                except CommandError:
                    out = ""
                self._nft_based = "(nf_tables)" in out
            else:
                self._nft_based = self.tools.flavour == "nft"
        return self._nft_based

    def _before_apply(self, plan: Plan) -> bool:
        """Notes the tables and built-in chains ``plan`` needs that do not exist yet:
        iptables-nft will create them, so they are ours to delete on removal."""
        if not self._makes_nft_tables():
            return False
        wanted = {
            (iptables_tables.nft_family(chains.family), jump.table, jump.builtin)
            for chains in iptables_render.render(plan)
            for jump in chains.jumps
        }
        unknown = {
            c for c in wanted if c[:2] not in self._created_tables and c not in self._created_chains
        }
        found = iptables_tables.missing(self.runner, unknown) if unknown else None
        if found is None or not (found[0] or found[1]):
            return False
        self._created_tables |= found[0]
        self._created_chains |= found[1]
        return True

    def _apply(self, plan: Plan) -> None:
        for chains in iptables_render.render(plan):
            missing = tuple(j for j in chains.jumps if not self._has_jump(chains.family, j))
            self._restore(chains.family, chains.restore_script(missing))
            self._prune(chains)

    def _prune(self, chains: ChainSet) -> None:
        """Removes chains of ours a previous plan had and this one does not (e.g. the IPv6
        NAT chains when NAT66 is switched off)."""
        keep = {(table, chain) for table, cs in chains.tables.items() for chain in cs}
        _, errors = self._remove_family(chains.family, keep)
        if errors:
            raise FirewallError("; ".join(errors))

    def _remove_family(
        self, family: int, keep: set[tuple[str, str]]
    ) -> tuple[list[str], list[str]]:
        """Removes our chains (but those in ``keep``): (what was removed, errors)."""
        prefix = f"{self.names.chain_prefix}-"
        errors: list[str] = []
        removed: list[str] = []
        for table in self._tables(family):
            rules = _split_rules(self._list(family, table))
            ours = [a[1] for a in rules if len(a) == 2 and a[0] == "-N" and a[1].startswith(prefix)]
            drop = [c for c in ours if (table, c) not in keep]
            # Jumps first (found by marker, and by target in case a marker was lost), then
            # empty every chain before deleting any: our chains jump to each other.
            for argv in rules:
                if argv[:1] != ["-A"] or argv[1].startswith(prefix):
                    continue
                marked = self.names.comment in argv
                target = argv[argv.index("-j") + 1] if "-j" in argv else ""
                if target in drop or (marked and not keep):
                    errors += self._tolerant(family, table, ["-D", *argv[1:]])
            for chain in drop:
                errors += self._tolerant(family, table, ["-F", chain])
            for chain in drop:
                failed = self._tolerant(family, table, ["-X", chain])
                errors += failed
                if not failed:
                    removed.append(f"{self.tools.iptables(family)} -t {table} chain {chain}")
        return removed, errors

    def _tolerant(self, family: int, table: str, args: list[str]) -> list[str]:
        try:
            self._ipt(family, "-t", table, *args)
        except CommandError as exc:
            if not exc.not_found:
                return [str(exc)]
        return []

    def _remove(self) -> list[str]:
        removed4, errors4 = self._remove_family(4, set())
        removed6, errors6 = self._remove_family(6, set())
        errors = errors4 + errors6
        removed = removed4 + removed6
        # Only once all our rules are gone can what iptables-nft created for them be empty.
        deletes: list[Callable[[], str | None]] = [
            partial(iptables_tables.delete_chain_if_empty, self.runner, chain)
            for chain in sorted(self._created_chains)
        ]
        deletes += [
            partial(iptables_tables.delete_table_if_empty, self.runner, table)
            for table in sorted(self._created_tables)
        ]
        for delete in deletes if not errors else []:
            try:
                gone = delete()
            except CommandError as exc:
                errors.append(str(exc))
                continue
            removed += [gone] if gone else []
        if errors:
            raise FirewallError(
                f"could not remove every iptables rule of {self.names.chain_prefix}: "
                + "; ".join(errors)
            )
        return removed

    def remove(self) -> None:
        super().remove()
        self._created_tables.clear()
        self._created_chains.clear()

    @classmethod
    def sweep(cls, names: FirewallNames, runner: Runner) -> list[str]:
        """Both flavours: rules left by a run that used the other one are ours too."""
        errors: list[str] = []
        removed: list[str] = []
        for flavour in ("nft", "legacy"):
            # Listing creates nothing in either flavour (see _tables), so no probe is needed.
            if shutil.which(f"iptables-{flavour}"):
                try:
                    removed += cls(names, runner, flavour=flavour)._remove()
                except FirewallError as exc:
                    errors.append(str(exc))
        if errors:
            raise FirewallError("; ".join(errors))
        return removed

    # --- journal and status ----------------------------------------------------------------

    def undo_spec(self) -> dict[str, Any]:  # the journal record of a FirewallUndo
        n = self.names
        return UNDO.record(
            FirewallUndo(
                self.name,
                n.table,
                n.chain_prefix,
                n.comment,
                flavour=self.tools.flavour,
                created_tables=[list(t) for t in sorted(self._created_tables)],
                created_chains=[list(c) for c in sorted(self._created_chains)],
            )
        )

    @classmethod
    def from_undo(cls, params: FirewallUndo, runner: Runner) -> IptablesBackend:
        flavours: dict[str | None, Flavour] = {"nft": "nft", "legacy": "legacy", "plain": "plain"}
        flavour = flavours.get(params.flavour)  # an unknown one: detected again
        backend = cls(params.names, runner, flavour=flavour)
        # Journals written before these were noted have none: those stay, as they did then.
        backend._created_tables = iptables_tables.parse_tables(params.created_tables)
        backend._created_chains = iptables_tables.parse_chains(params.created_chains)
        return backend

    def status(self) -> FirewallStatus:
        saves = {(f, t): self._list(f, t) for f in (4, 6) for t in self._tables(f)}
        return parse_status(self.names, saves)

    def fingerprint(self, runner: Runner | None = None) -> tuple[str, ...]:
        """Our chains' rules and our jumps from the built-in chains, as ``-S`` prints them."""
        prefix = f"{self.names.chain_prefix}-"
        out: list[str] = []
        for family in (4, 6):
            for table in self._tables(family, runner):
                for line in self._list(family, table, runner).splitlines():
                    if prefix in line or self.names.comment in line:
                        out.append(f"{family} {table} {line.strip()}")
        return tuple(out)


_VERSION = re.compile(r"\((nf_tables|legacy)\)")


def detect_flavour(runner: Runner) -> Flavour:
    """The flavour ``iptables`` itself is on this host; ``plain`` when only that exists."""
    try:
        out = runner.run(["iptables", "--version"], timeout=10).stdout
    except CommandError:
        out = ""
    m = _VERSION.search(out)
    if m and shutil.which(f"iptables-{'nft' if m[1] == 'nf_tables' else 'legacy'}"):
        return "nft" if m[1] == "nf_tables" else "legacy"
    return "plain"


def flavour_works(runner: Runner, flavour: Flavour) -> bool:
    """Both families answer (IPv6 rules are part of every plan: no leak by omission)."""
    tools = Tools(flavour)
    for family in (4, 6):
        try:
            runner.run([tools.iptables(family), *_WAIT, "-t", "filter", "-S", "FORWARD"])
        except CommandError:
            return False
    return True
