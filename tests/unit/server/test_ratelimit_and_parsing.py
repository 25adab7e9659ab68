"""Token buckets, expiry parsing, validation messages, database URLs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from higgs.common.errors import ConfigError, HiggsError
from higgs.server.api.errors import validation_message
from higgs.server.api.ratelimit import RateLimiter
from higgs.server.config import ServerSettings, split_listen
from higgs.server.services.identity import parse_expiry, validate_client_name
from higgs.server.store.db import database_url


def test_bucket_allows_burst_then_refills() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.take("k", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("k", now=0.0)
    assert wait == pytest.approx(0.5)
    assert limiter.retry_after_header(wait) == "1"
    assert limiter.take("k", now=0.5) == 0.0
    assert limiter.take("other", now=0.5) == 0.0  # keys are independent


def test_bucket_table_is_bounded() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_keys=10)
    for i in range(10):
        limiter.take(f"k{i}", now=0.0)
    limiter.take("late", now=100.0)  # the old, refilled buckets are pruned
    assert len(limiter._buckets) == 1


NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW + timedelta(minutes=30)),
        ("1h", NOW + timedelta(hours=1)),
        ("7d", NOW + timedelta(days=7)),
        ("2026-02-01T00:00:00", datetime(2026, 2, 1, tzinfo=UTC)),
        ("2026-02-01T02:00:00+02:00", datetime(2026, 2, 1, tzinfo=UTC)),
    ],
)
def test_parse_expiry(text: str, expected: datetime) -> None:
    assert parse_expiry(text, NOW) == expected


@pytest.mark.parametrize("text", ["soon", "1y", "-1h", "2025-01-01T00:00:00"])
def test_parse_expiry_rejects(text: str) -> None:
    with pytest.raises(HiggsError):
        parse_expiry(text, NOW)


@pytest.mark.parametrize("name", ["", "a b", "-x", "x" * 65, "é"])
def test_client_names(name: str) -> None:
    with pytest.raises(HiggsError):
        validate_client_name(name)
    assert validate_client_name("alice@example.org") == "alice@example.org"


def test_validation_message_names_fields() -> None:
    errors: list[dict[str, Any]] = [
        {
            "loc": ("body", "public_key"),
            "msg": "Value error, public key must decode to 32 bytes",
            "type": "value_error",
        },
        {"loc": ("body", "listen_port"), "msg": "Field required", "type": "missing"},
        {"loc": ("body", 3), "msg": "JSON decode error", "type": "json_invalid"},
    ]
    assert validation_message(errors) == (
        "body.public_key: public key must decode to 32 bytes; "
        "body.listen_port: field required; body: the request body is not valid JSON"
    )


def test_database_urls(tmp_path: Path) -> None:
    assert database_url(None, tmp_path) == f"sqlite+aiosqlite:///{tmp_path}/bosonserver.db"
    assert database_url("postgresql://u:p@h:5/db", tmp_path) == "postgresql+asyncpg://u:p@h:5/db"
    assert database_url("sqlite:////x/y.db", tmp_path) == "sqlite+aiosqlite:////x/y.db"
    with pytest.raises(ConfigError, match="unsupported backend"):
        database_url("mysql://h/db", tmp_path)
    with pytest.raises(ConfigError):
        database_url("::::", tmp_path)


def test_settings_validation() -> None:
    assert split_listen("[::1]:8080") == ("::1", 8080)
    assert split_listen(":9000") == ("0.0.0.0", 9000)
    with pytest.raises(ValueError, match="HOST:PORT"):
        split_listen("localhost")
    with pytest.raises(ValueError, match="together"):
        ServerSettings(tls_cert=Path("/c"))
    with pytest.raises(ValueError, match="ws://"):
        ServerSettings(relay_url="http://x")
    assert ServerSettings(public_url="https://api.example/").public_url == "https://api.example"
