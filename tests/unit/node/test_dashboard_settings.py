from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from higgs.node.ownerstate import (
    dashboard_token,
    is_paused,
    load_diagnose,
    save_diagnose,
    set_paused,
)
from higgs.node.settings import DashboardSettings


@pytest.mark.parametrize("listen", ["127.0.0.1:9586", "[::1]:9586", "127.0.0.2:0"])
def test_loopback_listen_is_accepted(listen: str) -> None:
    assert DashboardSettings(listen=listen).listen == listen


@pytest.mark.parametrize("listen", ["0.0.0.0:9586", "192.168.1.2:80", "localhost:1", "127.0.0.1"])
def test_other_listen_addresses_are_refused_naming_the_field(listen: str) -> None:
    with pytest.raises(ValidationError, match="listen"):
        DashboardSettings(listen=listen)


def test_token_pause_and_diagnose_files(tmp_path: Path) -> None:
    token = dashboard_token(tmp_path)
    assert token.startswith("hgo_")
    assert dashboard_token(tmp_path) == token  # stable across restarts
    assert stat.S_IMODE((tmp_path / "dashboard.token").stat().st_mode) == 0o600
    assert not is_paused(tmp_path)
    set_paused(tmp_path, True)
    assert is_paused(tmp_path)
    set_paused(tmp_path, False)
    set_paused(tmp_path, False)  # idempotent
    assert not is_paused(tmp_path)
    assert load_diagnose(tmp_path) is None
    save_diagnose(tmp_path, [{"name": "nat", "ok": False, "detail": "no masquerade"}], 1.0)
    assert load_diagnose(tmp_path) == {
        "at": 1.0,
        "checks": [{"name": "nat", "ok": False, "detail": "no masquerade"}],
    }
