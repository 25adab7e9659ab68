"""What ``higgsnode cleanup`` / ``higgsvpn cleanup`` and every start do: replay the journal,
then sweep everything named ours (STYLE.md practices 7 and 8). Both always run."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from higgs.osnet.errors import OsnetError, UndoError
from higgs.osnet.journal import Journal
from higgs.osnet.names import OwnedNames
from higgs.osnet.runner import Runner
from higgs.osnet.sweep import SweepReport, sweep

__all__ = ["PROVIDERS", "CleanupError", "CleanupReport", "cleanup", "load_providers"]

log = logging.getLogger(__name__)

# Modules that register undo operations (undo.register) or sweep hooks (sweep.register_hook)
# when imported. A fresh `cleanup` process must import them, or it would not know how to undo
# what a crashed run journaled (e.g. the firewall's "remove our table/chains").
PROVIDERS = ("higgs.osnet.firewall", "higgs.osnet.relaynat")


def load_providers() -> None:
    for name in PROVIDERS:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the provider exists but is broken: say so
                raise


class CleanupError(OsnetError):
    """Some of the cleanup failed; the message lists every failure."""


@dataclass
class CleanupReport:
    undone: int = 0
    swept: list[str] = field(default_factory=list)
    errors: list[OsnetError] = field(default_factory=list)

    def raise_for_failures(self) -> None:
        if self.errors:
            raise CleanupError("\n".join(str(e) for e in self.errors))


def cleanup(
    journal_path: Path,
    names: OwnedNames,
    *,
    runner: Runner | None = None,
    netns: str | None = None,
) -> CleanupReport:
    """Undoes what the journal at ``journal_path`` holds, then sweeps ``names``.

    Raises :class:`~higgs.osnet.errors.JournalError` at once if a live process owns the
    journal (cleaning up under a running node would pull its interface away).
    """
    load_providers()
    report = CleanupReport()
    with Journal(journal_path, runner=runner) as journal:
        pending = len(journal)
        try:
            journal.replay()
        except UndoError as exc:
            report.errors.append(exc)
        report.undone = pending - len(journal)
        swept: SweepReport = sweep(names, runner=journal.runner, netns=netns)
    report.swept = swept.removed
    if swept.failures:
        try:
            swept.raise_for_failures()
        except OsnetError as exc:
            report.errors.append(exc)
    log.info(
        "cleanup: undid %d journaled change(s), swept %d leftover(s)",
        report.undone,
        len(report.swept),
    )
    return report
