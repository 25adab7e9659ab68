"""The root of every error Higgs.net raises on purpose.

Each package derives its own errors from :class:`HiggsError`; a CLI catches it, prints the
message (which says what to do next) and exits 1. Anything else is a bug and gets a traceback.
"""

from __future__ import annotations

__all__ = ["ConfigError", "HiggsError"]


class HiggsError(Exception):
    """An expected failure with a message meant for the person at the terminal."""


class ConfigError(HiggsError):
    """A config file, environment variable or flag is invalid; the message names the field."""
