"""The exception tree of the OS layer.

Everything the OS layer raises on purpose derives from :class:`OsnetError` (a
:class:`~higgs.common.errors.HiggsError`, so a CLI prints its message and exits 1):

- :class:`CommandError` — a command run through the funnel failed (argv, exit code, stderr);
- :class:`JournalError` — the journal file is unusable or held by another process;
- :class:`UndoError` — one or more undo steps failed (all of them were attempted);
- :class:`DiscoveryError` — the host lacks what we need (no default route, no interface).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

from higgs.common.errors import HiggsError
from higgs.common.secrets import redact

__all__ = [
    "CommandError",
    "DiscoveryError",
    "JournalError",
    "OsnetError",
    "UndoError",
    "UndoFailure",
    "is_not_found",
]


class OsnetError(HiggsError):
    """Root of every error the OS layer raises on purpose."""


# What the tools we run print when the object to delete is already gone. Undo and sweep treat
# these as success: teardown must be idempotent (STYLE.md practice 6).
_NOT_FOUND = re.compile(
    r"No such file or directory|Cannot find device|No such device|No such process"
    r"|does not exist|not found|Bad rule \(does a matching rule exist|No chain/target/match"
    r"|Object not found|ENOENT|ESRCH|ENODEV",
    re.IGNORECASE,
)


def is_not_found(message: str) -> bool:
    """True when ``message`` says the object was already absent."""
    return bool(_NOT_FOUND.search(message))


class CommandError(OsnetError):
    """A command failed. ``returncode`` is None when it never finished (timeout, no binary)."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        status = "did not finish" if returncode is None else f"exited {returncode}"
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no error output"
        super().__init__(redact(f"`{shlex.join(self.argv)}` {status}: {detail}"))

    @property
    def not_found(self) -> bool:
        """True when the command failed because its object does not exist."""
        return is_not_found(self.stderr)


class JournalError(OsnetError):
    """The journal cannot be read, written or locked."""


class DiscoveryError(OsnetError):
    """The host lacks something we need (e.g. no default route); nothing was changed."""


class UndoFailure:
    """One failed undo step: the journal entry's description and why it failed."""

    __slots__ = ("entry_id", "error", "what")

    def __init__(self, entry_id: int, what: str, error: BaseException) -> None:
        self.entry_id = entry_id
        self.what = what
        self.error = error

    def __repr__(self) -> str:
        return f"UndoFailure({self.entry_id}, {self.what!r}, {self.error!r})"


class UndoError(OsnetError):
    """Some undo steps failed; every step was attempted. ``failures`` lists them all."""

    def __init__(self, failures: Sequence[UndoFailure]) -> None:
        self.failures = tuple(failures)
        lines = [f"  - {f.what}: {f.error}" for f in self.failures]
        super().__init__(
            f"{len(self.failures)} undo step(s) failed; they stay in the journal and will be "
            "retried by `cleanup`:\n" + "\n".join(lines)
        )
