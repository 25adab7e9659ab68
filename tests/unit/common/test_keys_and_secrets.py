from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from higgs.common.keys import (
    KeyError_,
    PrivateKey,
    load_or_create_private_key,
    validate_public_key,
)
from higgs.common.logging import RedactingFilter
from higgs.common.secrets import hash_token, new_token, redact


def test_key_file_is_created_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "state" / "node.key"
    key = load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_private_key(path)
    assert again.public_b64() == key.public_b64()
    assert validate_public_key(key.public_b64()) == key.public_b64()


def test_world_readable_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    load_or_create_private_key(path)
    path.chmod(0o644)
    with pytest.raises(KeyError_, match="chmod 600"):
        load_or_create_private_key(path)


def test_private_key_hides_itself() -> None:
    key = PrivateKey.generate()
    assert key.b64() not in repr(key)
    assert key.b64() not in str(key)
    assert f"{key}" == "PrivateKey(<hidden>)"


@pytest.mark.parametrize("bad", ["", "not base64!", "AAAA"])
def test_bad_public_keys(bad: str) -> None:
    with pytest.raises(ValueError, match="public key"):
        validate_public_key(bad)


def test_tokens_are_redacted_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    token = new_token("hgn_")
    assert hash_token(token) != token
    assert len(hash_token(token)) == 64
    assert token not in redact(f"Authorization: Bearer {token}")
    logger = logging.getLogger("test.redact")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO):
        logger.info("node registered with %s", token, extra={"cred": token})
    assert token not in caplog.text
    assert "hgn_***" in caplog.text
    assert all(token not in str(r.__dict__) for r in caplog.records)
