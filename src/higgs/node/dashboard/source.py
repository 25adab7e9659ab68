"""What the owner's page needs from the agent (the agent satisfies it)."""

from __future__ import annotations

from typing import Any, Protocol

from higgs.node.metrics import Budget
from higgs.node.settings import NodeSettings

__all__ = ["OwnerSource"]


class OwnerSource(Protocol):
    settings: NodeSettings
    budget: Budget

    def status(self) -> dict[str, Any]:
        """The agent's status (what ``higgsnode status --json`` shows)."""
        ...

    def set_paused(self, paused: bool) -> None:
        """Stops (or resumes) taking new sessions and tells the server at once."""
        ...
