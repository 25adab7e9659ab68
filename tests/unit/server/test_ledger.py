"""The exactly-once ledger of session announcements: whichever path sees a close first
announces it, and nobody announces it twice."""

from __future__ import annotations

from higgs.server.services.ledger import AnnouncementLedger


def test_reconcile_takes_an_admitted_session_once() -> None:
    ledger = AnnouncementLedger()
    ledger.admit("s_1")
    assert ledger.take("s_1")
    assert not ledger.take("s_1")
    assert "s_1" not in ledger


def test_a_claim_wins_over_a_later_reconcile() -> None:
    ledger = AnnouncementLedger()
    ledger.admit("s_1")
    ledger.admit("s_2")
    snapshot = ledger.snapshot()  # reconcile read the ids, then awaits the database …
    assert ledger.claim(["s_1"]) == ["s_1"]  # … meanwhile a close path claims one
    assert sorted(snapshot) == ["s_1", "s_2"]
    assert [i for i in snapshot if ledger.take(i)] == ["s_2"]


def test_only_admitted_sessions_are_claimed() -> None:
    ledger = AnnouncementLedger()
    ledger.admit("s_1")
    # s_9 was opened by another instance: this process never announced it open.
    assert ledger.claim(["s_1", "s_9"]) == ["s_1"]
    assert ledger.claim(["s_1"]) == []  # a second closing path owns nothing


def test_a_failed_close_gives_the_claim_back() -> None:
    ledger = AnnouncementLedger()
    ledger.admit("s_1")
    claimed = ledger.claim(["s_1"])
    ledger.unclaim(claimed)  # the transaction rolled back: still open
    assert "s_1" in ledger
    assert ledger.take("s_1")


def test_forget_ends_tracking_whoever_announced() -> None:
    ledger = AnnouncementLedger()
    ledger.admit("s_1")
    ledger.forget("s_1")
    assert len(ledger) == 0
    assert not ledger.take("s_1")
