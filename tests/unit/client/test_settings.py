from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from higgs.client.settings import load_client_settings
from higgs.common.errors import ConfigError

TOKEN = "hgc_" + "x" * 20


def test_defaults_full_tunnel_with_kill_switch() -> None:
    s = load_client_settings(environ={})
    assert s.mode == "auto"
    assert s.full_tunnel
    assert s.kill_switch_enabled
    assert s.state_dir == Path("/var/lib/higgsvpn")
    assert s.key_file == Path("/var/lib/higgsvpn/device.key")
    assert s.resolv_conf == Path("/etc/resolv.conf")


def test_file_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "higgsvpn.toml"
    cfg.write_text(
        'server_url = "https://boson.example:8443/"\nmode = "relay"\n'
        'split = ["10.0.0.0/8"]\ninterface = "hv-file"\n'
    )
    env = {"HIGGSVPN_TOKEN": TOKEN, "HIGGSVPN_SPLIT": "192.168.0.0/16, 172.16.0.0/12"}
    s = load_client_settings(file=cfg, environ=env, overrides={"interface": "hv-flag"})
    assert s.server_url == "https://boson.example:8443"
    assert s.token == TOKEN
    assert s.split == (
        ipaddress.ip_network("192.168.0.0/16"),
        ipaddress.ip_network("172.16.0.0/12"),
    )
    assert s.interface == "hv-flag"
    # A split tunnel leaves the rest of the traffic outside: no kill switch unless asked.
    assert not s.full_tunnel
    assert not s.kill_switch_enabled
    assert load_client_settings(environ=env, overrides={"kill_switch": True}).kill_switch_enabled


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"server_url": "boson.example"}, "server_url"),
        ({"token": "hga_admin_token_here"}, "token"),
        ({"interface": "a-name-that-is-too-long"}, "interface"),
        ({"interface": "bad/name"}, "interface"),
        ({"mode": "tcp"}, "mode"),
        ({"split": ["10.0.0.0/33"]}, "split"),
        ({"country": "Germany"}, "country"),
        ({"handshake_timeout_s": 0}, "handshake_timeout_s"),
    ],
)
def test_bad_values_are_named(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"field '{field}' \(command line\)"):
        load_client_settings(environ={}, overrides=overrides)


def test_token_never_echoed() -> None:
    with pytest.raises(ConfigError) as err:
        load_client_settings(environ={}, overrides={"token": "hga_supersecretvalue"})
    assert "supersecret" not in str(err.value)
    assert TOKEN not in repr(load_client_settings(environ={}, overrides={"token": TOKEN}))


def test_unknown_field_rejected(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("servr_url = 'http://x'\n")
    with pytest.raises(ConfigError, match="servr_url"):
        load_client_settings(file=cfg, environ={})
