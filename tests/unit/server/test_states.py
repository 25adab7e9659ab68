"""The server's state and mode enums spell exactly the API's Literals."""

from __future__ import annotations

from enum import StrEnum
from typing import get_args

import pytest

from higgs.protocol import api
from higgs.server.store import states


@pytest.mark.parametrize(
    ("enum", "literal"),
    [
        (states.SessionState, api.SessionState),
        (states.NodeState, api.NodeState),
        (states.RouteMode, api.RouteMode),
    ],
)
def test_enum_and_api_literal_agree(enum: type[StrEnum], literal: object) -> None:
    assert {m.value for m in enum} == set(get_args(literal))
