"""The exactly-once ledger of session announcements (pure; no I/O).

A session this process admitted to the relay hub (and announced to its node with
``peer_add``) must be announced closed exactly once (``hub.close_session`` and
``peer_remove``), whichever path notices the close first: the client's ``DELETE``, a replaced
key, expiry, the node's deregistration, or :meth:`~higgs.server.services.sessions.
SessionService.reconcile` finding a close made behind this process's back (the CLI, another
instance). The ledger holds the sessions announced open and not yet claimed by a closing path:

- :meth:`admit` when a session is announced open (a new route, or reloaded at start);
- :meth:`claim` *inside* the closing transaction, before it commits: from then on only that
  path announces the close, so a concurrent reconcile that already sees the row closed in the
  database skips it;
- :meth:`unclaim` when that transaction failed (the sessions are still open);
- :meth:`take` for reconcile: True exactly once per admitted, unclaimed session.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["AnnouncementLedger"]


class AnnouncementLedger:
    def __init__(self) -> None:
        self._open: set[str] = set()

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._open

    def admit(self, session_id: str) -> None:
        """The session was announced open."""
        self._open.add(session_id)

    def claim(self, session_ids: Iterable[str]) -> list[str]:
        """The caller is closing these sessions: returns those it now owns the announcement
        of (the admitted ones), which no other path will announce."""
        ids = [i for i in session_ids if i in self._open]
        self._open.difference_update(ids)
        return ids

    def unclaim(self, session_ids: Iterable[str]) -> None:
        """The closing transaction failed: keep tracking what :meth:`claim` returned."""
        self._open.update(session_ids)

    def take(self, session_id: str) -> bool:
        """True (once) when the session was admitted and nobody claimed it since."""
        if session_id in self._open:
            self._open.discard(session_id)
            return True
        return False

    def forget(self, session_id: str) -> None:
        """The close was announced (by whatever path): stop tracking the session."""
        self._open.discard(session_id)

    def snapshot(self) -> list[str]:
        """The sessions tracked right now (for reconcile to look up)."""
        return list(self._open)
