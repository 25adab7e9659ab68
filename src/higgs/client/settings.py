"""higgsvpn settings: TOML file, then ``HIGGSVPN_…`` environment variables, then flags.

Everything the client needs to know before it touches the host is validated here, so that a
typo in a CIDR or an interface name is reported (naming the field) before any change is made.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from higgs.common.config import load_settings
from higgs.osnet.names import DEFAULT_INTERFACE

__all__ = [
    "DEFAULT_STATE_DIR",
    "ENV_PREFIX",
    "PATH_DEAD_S",
    "ClientSettings",
    "Mode",
    "load_client_settings",
]

# A direct or punched path with nothing received for this long is dead: two of the node's
# 2 s keepalives missed, and the ping higgs.client.punch.PathWatch sends after 1.5 s of
# silence unanswered. Short, because the session must be back on the relay within 10 s
# (issue 12) and that takes a handshake after this (the node's own limit is the same).
PATH_DEAD_S = 4.0

ENV_PREFIX = "HIGGSVPN_"
DEFAULT_STATE_DIR = Path("/var/lib/higgsvpn")

Mode = Literal["auto", "relay", "direct"]

# Linux interface names: at most 15 bytes, no '/', no whitespace, not '.' or '..'.
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,14}$")
_COUNTRY_RE = re.compile(r"^[A-Z]{2}$")


class ClientSettings(BaseModel):
    """What higgsvpn is configured with; every field can come from file, env or flag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server_url: str = Field(default="http://127.0.0.1:8080", description="bosonserver REST URL")
    token: str | None = Field(default=None, description="client token hgc_…", repr=False)
    state_dir: Path = DEFAULT_STATE_DIR
    interface: str = DEFAULT_INTERFACE["client"]
    mode: Mode = "auto"
    node_id: str | None = None
    country: str | None = None
    split: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    kill_switch: bool | None = Field(
        default=None, description="default: on for a full tunnel, off for a split tunnel"
    )
    resolv_conf: Path = Path("/etc/resolv.conf")
    ca_file: Path | None = None
    handshake_timeout_s: float = Field(default=20.0, gt=0, le=300)
    direct_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # The UDP relay needs the node's first handshake toward it: up to one REKEY_TIMEOUT (5 s)
    udp_relay_timeout_s: float = Field(default=12.0, gt=0, le=120)
    http_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # Hole punching (issue 12): ask the server for an offer this often while on the UDP relay;
    # a direct or punched path that received nothing for path_dead_s (while pinged) is left.
    punch: bool = True
    punch_poll_s: float = Field(default=2.0, gt=0, le=600)
    # How often the session's UDP relay endpoint is checked: a relay host that dies moves the
    # session to another one (docs/scaleout.md), which we learn here.
    relay_check_s: float = Field(default=2.0, gt=0, le=600)
    path_dead_s: float = Field(default=PATH_DEAD_S, gt=1, le=600)

    @field_validator("server_url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL, e.g. https://boson.example:8080")
        return value

    @field_validator("token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value.startswith("hgc_") or len(value) < 12:
            # Never echo the value: it may be some other secret pasted by mistake.
            raise ValueError("must be a client token starting with 'hgc_'")
        return value

    @field_validator("interface")
    @classmethod
    def _ifname(cls, value: str) -> str:
        if not _IFNAME_RE.match(value) or value in {".", ".."}:
            raise ValueError("must be 1-15 characters of letters, digits, '_', '-', '.'")
        return value

    @field_validator("country")
    @classmethod
    def _country(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().upper()
        if not _COUNTRY_RE.match(value):
            raise ValueError("must be a two-letter country code such as DE")
        return value

    @field_validator("split", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in re.split(r"[,\s]+", value) if part]
        if isinstance(value, list | tuple):
            out = []
            for item in value:
                try:
                    out.append(ipaddress.ip_network(str(item), strict=False))
                except ValueError as exc:
                    raise ValueError(f"{item!r} is not a CIDR prefix such as 10.0.0.0/8") from exc
            return tuple(out)
        return value

    @property
    def instance(self) -> str:
        """The instance name our owned objects carry: the nft table, the routing table id and
        fwmark, the rule priorities all derive from it (osnet's OwnedNames), so two clients
        with different interfaces never share any of them."""
        return re.sub(r"[^a-z0-9_]", "_", self.interface.lower()).lstrip("_")[:12] or "default"

    @property
    def full_tunnel(self) -> bool:
        return not self.split

    @property
    def kill_switch_enabled(self) -> bool:
        return self.full_tunnel if self.kill_switch is None else self.kill_switch

    # Files the client owns in its state directory.
    @property
    def key_file(self) -> Path:
        return self.state_dir / "device.key"

    @property
    def journal_file(self) -> Path:
        return self.state_dir / "journal.json"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "daemon.pid"

    @property
    def status_file(self) -> Path:
        return self.state_dir / "status.json"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "daemon.log"


def load_client_settings(
    *,
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ClientSettings:
    """Builds the settings; raises :class:`higgs.common.errors.ConfigError` naming a bad field."""
    return load_settings(
        ClientSettings, file=file, env_prefix=ENV_PREFIX, environ=environ, overrides=overrides
    )
