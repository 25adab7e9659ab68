"""The tiny interface every firewall backend implements (sshuttle ``methods/__init__.py`` style).

A backend owns the rules carrying one :class:`~.plan.FirewallNames`: it applies a plan (whole,
atomically where the tool allows), tells whether its rules are present, describes them for
``higgsnode diagnose``, removes them, and sweeps them without any state. With a journal, the
first apply is recorded — with an undo that removes everything ours — before it is made, so a
crash at any point leaves something ``cleanup`` can undo.
"""

from __future__ import annotations

import abc
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar

from higgs.osnet import undo as undo_ops
from higgs.osnet.changes import ChangeLog, Entry
from higgs.osnet.errors import OsnetError
from higgs.osnet.runner import Runner

from .plan import FirewallNames, IPAddress, NodePolicy, Plan

__all__ = ["UNDO", "UNDO_OP", "FirewallBackend", "FirewallError", "FirewallStatus", "FirewallUndo"]

log = logging.getLogger(__name__)

# The journal's undo operation for our rules (registered in higgs.osnet.firewall).
UNDO_OP = "firewall_remove"


class FirewallError(OsnetError):
    """A firewall backend could not apply or remove its rules."""


@dataclass(frozen=True, slots=True)
class FirewallStatus:
    """What is actually in the kernel under our names, as ``diagnose`` reports it."""

    backend: str
    applied: bool
    # (source prefix, outgoing interface) of each masquerade rule
    masquerade: tuple[tuple[str, str], ...] = ()
    # "address:port" each DNS query from the tunnel is redirected to
    dns_redirect: tuple[str, ...] = ()
    mss_clamp: bool = False
    kill_switch: bool = False

    def masquerades_on(self, uplink: str) -> bool:
        return any(oif == uplink for _, oif in self.masquerade)

    def lines(self) -> list[str]:
        if not self.applied:
            return [f"{self.backend}: no firewall rules of ours present"]
        out = [f"{self.backend}: rules present"]
        out += [f"masquerade of {src} on uplink {oif} present" for src, oif in self.masquerade]
        out += [f"DNS from the tunnel redirected to {to}" for to in self.dns_redirect]
        if self.mss_clamp:
            out.append("TCP MSS clamped to the route MTU")
        if self.kill_switch:
            out.append("kill switch active: only the tunnel and allowed endpoints may send")
        return out


class FirewallBackend(abc.ABC):
    """One way of programming the kernel's packet filter."""

    name: ClassVar[str]

    def __init__(
        self, names: FirewallNames, runner: Runner, journal: ChangeLog | None = None
    ) -> None:
        self.names = names
        self.runner = runner
        self.journal = journal
        self._entry: Entry | None = None
        self._plan: Plan | None = None
        # Applies and removals from the agent's threads and the rule watch (.watch) take
        # turns; the fingerprint of what the last apply left lets the watch tell another
        # program's change from our own.
        self.lock = threading.RLock()
        self.applied_fingerprint: tuple[str, ...] = ()

    # --- probing ---------------------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def is_supported(cls, runner: Runner) -> bool:
        """Whether this host (or namespace) can run this backend; never raises."""

    # --- the parts each backend provides ----------------------------------------------------

    @abc.abstractmethod
    def _apply(self, plan: Plan) -> None:
        """Makes the kernel hold exactly ``plan`` under our names."""

    def _before_apply(self, plan: Plan) -> bool:
        """Looks at the host before ``plan`` is applied (and before the first apply is
        journaled); True when :meth:`undo_spec` has grown since it was last journaled."""
        del plan
        return False

    @abc.abstractmethod
    def _remove(self) -> list[str]:
        """Removes everything under our names; absent is fine; raises FirewallError.
        Returns what was there and is gone now."""

    @abc.abstractmethod
    def undo_spec(self) -> undo_ops.Undo:
        """The journal's undo for our rules (:data:`UNDO` of a :class:`FirewallUndo`), which
        :meth:`from_undo` turns back into a backend able to remove them."""

    @abc.abstractmethod
    def status(self) -> FirewallStatus:
        """What is present now (read from the kernel, not from memory)."""

    @abc.abstractmethod
    def fingerprint(self, runner: Runner | None = None) -> tuple[str, ...]:
        """A short summary of our rules as the kernel holds them now (empty: none), equal
        for equal rule sets and blind to counters and to dynamic set elements. ``runner``
        (a quiet one, for the periodic checks) replaces :attr:`runner`."""

    @classmethod
    @abc.abstractmethod
    def from_undo(cls, params: FirewallUndo, runner: Runner) -> FirewallBackend: ...

    # --- the public surface -----------------------------------------------------------------

    @property
    def plan(self) -> Plan | None:
        """The plan last applied by this object."""
        return self._plan

    def apply(self, plan: Plan) -> None:
        """Applies ``plan`` (replacing whatever we had before) — journaled before the first
        change; a first apply that fails is rolled back (fail closed)."""
        if plan.names != self.names:
            raise FirewallError(
                f"plan for {plan.names.table!r} given to the backend of {self.names.table!r}"
            )
        with self.lock:
            self._apply_locked(plan)
            self.applied_fingerprint = self.fingerprint()

    def _apply_locked(self, plan: Plan) -> None:
        grown = self._before_apply(plan)
        if self.journal is not None and self._entry is None:
            what = f"firewall ({self.name}) rules {self.names.table}"
            self._entry = self.journal.record(what, self.undo_spec())
            try:
                self._apply(plan)
            except BaseException as exc:
                try:
                    self.journal.undo(self._entry)
                except OsnetError as undo_exc:
                    exc.add_note(f"rolling back the firewall also failed: {undo_exc}")
                self._entry = None
                raise
        else:
            # Re-apply: the journal already holds the undo (amended first when this plan
            # needs more of it), and a failed re-apply leaves the previous rules (nft:
            # untouched, atomically; iptables: per table).
            if grown and self.journal is not None and self._entry is not None:
                self._entry = self.journal.amend(self._entry, self.undo_spec())
            self._apply(plan)
        self._plan = plan
        log.info("firewall (%s) applied: %s", self.name, self.names.table)

    def reapply(self) -> bool:
        """Applies the last plan again (another program removed our rules); False when
        there is none (never applied, or removed by us)."""
        with self.lock:
            if self._plan is None:
                return False
            self.apply(self._plan)
            return True

    def update_uplink(
        self, uplink_if: str, own_addresses: tuple[IPAddress, ...] | None = None
    ) -> None:
        """Moves NAT and forwarding to a new uplink in one re-apply: established sessions
        keep flowing (their conntrack entries are untouched and the rules never vanish)."""
        if not isinstance(self._plan, NodePolicy):
            raise FirewallError("update_uplink needs a node policy applied first")
        self.apply(self._plan.with_uplink(uplink_if, own_addresses))

    def remove(self) -> None:
        """Removes our rules; idempotent. Clears the journal entry when it succeeds."""
        with self.lock:
            # No plan first: a rule watch must not put back what is being removed on purpose.
            self._plan = None
            self.applied_fingerprint = ()
            if self.journal is not None and self._entry is not None:
                self.journal.undo(self._entry)  # runs the same removal, then drops the entry
                self._entry = None
            else:
                self._remove()

    def is_applied(self) -> bool:
        return self.status().applied

    def describe(self) -> list[str]:
        """Human-readable facts for ``diagnose``, e.g. "masquerade ... on uplink eth0"."""
        return self.status().lines()

    @classmethod
    def sweep(cls, names: FirewallNames, runner: Runner) -> list[str]:
        """Removes anything under ``names`` without any state (last line of defence);
        returns what it removed."""
        return cls(names, runner)._remove()


@dataclass(frozen=True)
class FirewallUndo:
    """The ``firewall_remove`` undo's parameters: our names, and what the backend needs to
    remove exactly what it added."""

    backend: str
    table: str
    chain_prefix: str
    comment: str
    # iptables only: its flavour, and the nft tables and built-in chains it created.
    flavour: str | None = None
    # Items stay untyped here: iptables_tables.parse_* keep only iptables' own, so a damaged
    # or edited journal can neither make us delete another table nor block the undo.
    created_tables: list[Any] = field(default_factory=list)
    created_chains: list[Any] = field(default_factory=list)

    @property
    def names(self) -> FirewallNames:
        return FirewallNames(self.table, self.chain_prefix, self.comment)


def _undo_remove(params: FirewallUndo, ctx: undo_ops.UndoContext) -> None:
    backends = {cls.name: cls for cls in FirewallBackend.__subclasses__()}
    cls = backends.get(params.backend)
    if cls is None:
        raise FirewallError(f"journal names an unknown firewall backend {params.backend!r}")
    cls.from_undo(params, ctx.runner).remove()


UNDO = undo_ops.UndoOp(UNDO_OP, FirewallUndo, _undo_remove)
