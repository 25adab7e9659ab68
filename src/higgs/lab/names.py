"""Names of one lab run: every namespace, interface and socket carries the run's prefix.

Several engineers build labs on the same machine at the same time, so every name a run creates
starts with ``<prefix>-<suffix>`` (e.g. ``hl-3fa9c1``); teardown and the leftover checks only
ever look at names of their own run.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

__all__ = ["IFNAMSIZ_MAX", "RunNames", "new_run_names"]

# Linux IFNAMSIZ is 16 including the trailing NUL.
IFNAMSIZ_MAX = 15

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,3}$")
_SUFFIX_RE = re.compile(r"^[0-9a-f]{6}$")
_TAG_RE = re.compile(r"^[a-z0-9]{1,8}$")
_ROLE_RE = re.compile(r"^[a-z][a-z0-9_]{0,19}$")


@dataclass(frozen=True)
class RunNames:
    """The names of one run: ``ns("node")`` -> ``hl-3fa9c1-node``."""

    prefix: str
    suffix: str

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(f"lab prefix must be 1-4 lowercase letters/digits: {self.prefix!r}")
        if not _SUFFIX_RE.match(self.suffix):
            raise ValueError(f"lab suffix must be 6 hex digits: {self.suffix!r}")

    @property
    def stem(self) -> str:
        """What every name of this run starts with."""
        return f"{self.prefix}-{self.suffix}"

    def ns(self, role: str) -> str:
        """Namespace name for a host role."""
        if not _ROLE_RE.match(role):
            raise ValueError(f"bad host role {role!r}")
        return f"{self.stem}-{role}"

    def ifname(self, tag: str) -> str:
        """A globally unique interface name (wireguard-go sockets share one directory)."""
        if not _TAG_RE.match(tag):
            raise ValueError(f"interface tag must be 1-8 lowercase letters/digits: {tag!r}")
        name = f"{self.stem}-{tag}"
        if len(name) > IFNAMSIZ_MAX:
            raise ValueError(f"interface name {name!r} is longer than {IFNAMSIZ_MAX} characters")
        return name

    def owns(self, name: str) -> bool:
        """Whether ``name`` belongs to this run."""
        return name == self.stem or name.startswith(self.stem + "-")


def new_run_names(prefix: str = "hl") -> RunNames:
    """Fresh names for a new run, with a random suffix."""
    return RunNames(prefix=prefix, suffix=secrets.token_hex(3))
