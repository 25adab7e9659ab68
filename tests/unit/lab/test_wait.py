"""The one wait_until: returns what the check found, tolerates only what it is told to."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from higgs.lab.errors import LabError
from higgs.lab.wait import WaitTimeout, wait_until


def test_returns_the_first_truthy_answer() -> None:
    answers: Iterator[object] = iter([None, [], {"state": "online"}])
    assert wait_until("online", lambda: next(answers), 5, 0.001) == {"state": "online"}


def test_times_out_naming_what_and_the_last_tolerated_error() -> None:
    def starting() -> bool:
        raise ConnectionRefusedError("not listening yet")

    with pytest.raises(WaitTimeout, match=r"the server.*not listening yet") as err:
        wait_until("the server", starting, 0.05, 0.01, tolerate=(OSError,))
    assert isinstance(err.value, LabError)
    assert isinstance(err.value, AssertionError)  # a test failure, not a harness error


def test_an_error_not_tolerated_stops_the_wait_at_once() -> None:
    def broken() -> bool:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        wait_until("anything", broken, 5, 0.001, tolerate=(OSError,))
