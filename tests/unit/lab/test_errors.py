"""Lab errors end up in test reports and CI logs: they never carry a credential."""

from __future__ import annotations

from higgs.common.secrets import new_token
from higgs.lab.errors import CommandError, LabError


def test_a_failed_command_names_no_token_but_keeps_its_output() -> None:
    token = new_token("hgc_")
    error = CommandError(["bosonserver", "client", "add", "x"], None, f"client x\ntoken {token}\n")
    assert token not in str(error)
    assert "hgc_***" in str(error)
    assert "timed out" in str(error)
    assert token in error.output  # the caller may still parse what it asked for


def test_any_lab_error_is_scrubbed() -> None:
    token = new_token("hga_")
    assert token not in str(LabError(f"GET /v1/admin/x: HTTP 500: {token}"))
