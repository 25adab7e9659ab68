from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from higgs.common.config import load_settings
from higgs.common.errors import ConfigError


class Limits(BaseModel):
    rate_mbit: float = Field(default=10, gt=0)


class Settings(BaseModel):
    server: str = "http://127.0.0.1:8080"
    port: int = Field(default=51820, ge=1, le=65535)
    limits: Limits = Limits()


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('port = 1000\nserver = "http://file"\n[limits]\nrate_mbit = 5\n')
    env = {"HX_PORT": "2000", "HX_LIMITS__RATE_MBIT": "7", "OTHER": "x"}
    s = load_settings(Settings, file=cfg, env_prefix="HX_", environ=env, overrides={"port": 3000})
    assert (s.port, s.server, s.limits.rate_mbit) == (3000, "http://file", 7)


def test_none_override_means_not_given() -> None:
    s = load_settings(Settings, environ={}, overrides={"port": None})
    assert s.port == 51820


def test_bad_field_is_named_with_its_origin(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[limits]\nrate_mbit = -1\n")
    with pytest.raises(ConfigError, match=r"field 'limits.rate_mbit' \(config file .*c.toml\)"):
        load_settings(Settings, file=cfg, environ={})
    with pytest.raises(ConfigError, match=r"field 'port' \(environment\)"):
        load_settings(Settings, environ={"HX_PORT": "seventy"}, env_prefix="HX_")


def test_unreadable_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(Settings, file=tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("port = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(Settings, file=bad, environ={})
