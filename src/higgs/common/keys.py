"""WireGuard (X25519) keys: generation, base64 form, and 0600 key files.

A private key is wrapped in :class:`PrivateKey` so that it cannot end up in a log line or a
traceback by accident: its ``repr``/``str`` hide the value; ``.b64()`` must be called on purpose.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from higgs.common.errors import HiggsError

__all__ = ["KeyError_", "PrivateKey", "load_or_create_private_key", "validate_public_key"]


class KeyError_(HiggsError):
    """A key file or key string is unusable."""


class PrivateKey:
    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise KeyError_("a WireGuard private key is 32 bytes")
        self._raw = raw

    @classmethod
    def generate(cls) -> PrivateKey:
        key = X25519PrivateKey.generate()
        return cls(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))

    @classmethod
    def from_b64(cls, text: str) -> PrivateKey:
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise KeyError_("private key is not valid base64") from exc
        return cls(raw)

    @property
    def raw(self) -> bytes:
        return self._raw

    def b64(self) -> str:
        return base64.b64encode(self._raw).decode()

    def public_b64(self) -> str:
        pub = X25519PrivateKey.from_private_bytes(self._raw).public_key()
        return base64.b64encode(pub.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()

    def __repr__(self) -> str:
        return "PrivateKey(<hidden>)"

    __str__ = __repr__


def validate_public_key(text: str) -> str:
    """Returns the canonical base64 form of a WireGuard public key, or raises ValueError."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("public key is not valid base64") from exc
    if len(raw) != 32:
        raise ValueError("public key must decode to 32 bytes")
    X25519PublicKey.from_public_bytes(raw)
    return base64.b64encode(raw).decode()


def write_secret_file(path: Path, content: str) -> None:
    """Writes ``content`` to ``path`` with mode 0600 from the first byte (atomic rename)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, content.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_or_create_private_key(path: Path) -> PrivateKey:
    """Loads the key at ``path``; creates it (0600) on first use. Refuses a world-readable key."""
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise KeyError_(
                f"key file {path} has mode {mode:04o}; it must be private: chmod 600 {path}"
            )
        return PrivateKey.from_b64(path.read_text())
    key = PrivateKey.generate()
    write_secret_file(path, key.b64() + "\n")
    return key
