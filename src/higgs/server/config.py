"""bosonserver settings: TOML ``--config``, ``BOSON_*`` environment, flags (in that order)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from higgs.common.relay_ports import DEFAULT_COOLDOWN_S, PortRange
from higgs.protocol.api import parse_endpoint

__all__ = ["ENV_PREFIX", "ServerSettings", "split_listen"]

ENV_PREFIX = "BOSON_"


def split_listen(value: str) -> tuple[str, int]:
    """``127.0.0.1:8080`` / ``[::1]:8080`` / ``:8080`` → (host, port); port 0 = ephemeral."""
    if value.startswith(":"):
        value = "0.0.0.0" + value
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r} must look like HOST:PORT")
    return host, int(port_text)


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listen: str = Field(default="127.0.0.1:8080", description="REST API address")
    relay_listen: str = Field(default="127.0.0.1:8081", description="relay WebSocket address")
    public_url: str | None = Field(default=None, description="API base URL as clients see it")
    relay_url: str | None = Field(
        default=None, description="relay base URL as nodes/clients see it (ws:// or wss://)"
    )
    data_dir: Path = Path("/var/lib/bosonserver")
    database: str | None = Field(default=None, description="postgresql://… (default: SQLite)")
    tls_cert: Path | None = None
    tls_key: Path | None = None

    heartbeat_interval_s: int = Field(default=15, ge=1, le=3600)
    missed_heartbeats: int = Field(default=3, ge=1, le=100)
    session_ttl_s: int = Field(default=600, ge=1, le=86400)
    sweep_interval_s: float = Field(default=5.0, gt=0, le=600)
    # A peer that handshook this recently keeps its session alive (direct path, no relay).
    handshake_fresh_s: float = Field(default=180.0, gt=0)
    # Successful credential lookups are cached this long (0: off). A revocation by this server
    # holds at once; one written by the CLI from another process holds within this time.
    auth_cache_ttl_s: float = Field(default=5.0, ge=0, le=300)
    # Registration must prove the node holds its private key (docs/security.md); false only
    # to let nodes older than the proof register during an upgrade (logged as a warning).
    require_key_proof: bool = True

    relay_ping_interval_s: float = Field(default=15.0, gt=0, le=3600)
    relay_dead_after_s: float = Field(default=45.0, gt=0, le=3600)

    # UDP relay (docs/protocol.md §5): the address both legs reach; None = no UDP relay.
    udp_relay_address: str | None = Field(default=None, description="relay IPv4 or IPv6 address")
    udp_relay_ports: str = Field(default="40000-49999", description="FIRST-LAST")
    udp_relay_cooldown_s: float = Field(default=DEFAULT_COOLDOWN_S, ge=0)
    udp_relay_embedded: bool = Field(default=True, description="run it in the serve process")
    udp_relay_userspace: bool = Field(default=False, description="no kernel forwarding")
    udp_relay_metrics_listen: str | None = Field(default=None, description="HOST:PORT /metrics")
    # The embedded relay's RTT probe (docs/protocol.md §5.5); 0: any free port, registered.
    udp_relay_probe_port: int = Field(default=0, ge=0, le=65535)
    # Relay hosts (docs/scaleout.md): one silent this long is down and its sessions move to
    # another; the API looks for such hosts every relay_failover_check_s.
    relay_host_dead_after_s: float = Field(default=5.0, gt=0, le=600)
    relay_failover_check_s: float = Field(default=1.0, gt=0, le=600)

    # Devices (issue 18): long-lived peers of an account; how many one account may hold, and
    # how long a node may stay away before its devices are reported as gone for good.
    max_devices_per_client: int = Field(default=10, ge=0, le=10_000)
    device_node_gone_s: float = Field(default=7 * 86400.0, gt=0)
    # A direct device whose node has been without that endpoint this long gets a UDP relay
    # lease its app roams onto (services/device_roaming.py). Longer than a re-probe of the
    # mapping (10 s, services/reachability.py), so a mapping that is only being verified
    # again after a new source address does not move the device.
    device_roam_after_s: float = Field(default=15.0, ge=0, le=86400)
    # Hole punching (issue 12, services/punch.py): start lead, probe window, retry pace, and
    # how long a client that never asks waits before the node steers it (official apps).
    punch_enabled: bool = True
    punch_lead_s: float = Field(default=1.0, ge=0, le=30)
    punch_window_s: float = Field(default=4.0, gt=0, le=60)
    punch_retry_s: float = Field(default=30.0, gt=0, le=3600)
    punch_steer_after_s: float = Field(default=15.0, gt=0, le=3600)
    punch_steer_window_s: float = Field(default=30.0, gt=0, le=60)  # (Punch.window_s)

    rate_limit_per_s: float = Field(default=20.0, gt=0, description="sustained requests/s")
    rate_limit_burst: int = Field(default=60, ge=1, description="bucket size")
    max_body_bytes: int = Field(default=1 << 20, ge=1024)

    # Scale-out (docs/scaleout.md): several instances on one PostgreSQL, linked by a bus.
    # None (the default) is the embedded server: one process, no bus, nothing below used.
    bus: str | None = Field(default=None, description="nats://host:port (default: none)")
    instance_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$", description="default: host-pid"
    )
    # Where clients reach this instance's own relay hub (a relayed session's client link must
    # land on the instance holding its node's link); default: --relay-url.
    instance_relay_url: str | None = None
    cluster_beat_s: float = Field(default=1.0, gt=0, le=60)
    cluster_reconcile_s: float = Field(default=2.0, gt=0, le=600)
    # An instance silent this long is dead: its nodes' presence no longer counts.
    instance_dead_after_s: float = Field(default=5.0, gt=0, le=600)

    @field_validator("listen", "relay_listen", "udp_relay_metrics_listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            split_listen(value)
        return value

    @field_validator("udp_relay_ports")
    @classmethod
    def _ports(cls, value: str) -> str:
        PortRange.parse(value)
        return value

    @field_validator("udp_relay_address")
    @classmethod
    def _relay_address(cls, value: str | None) -> str | None:
        if value is not None:
            return str(ipaddress.ip_address(value))  # one spelling: leases are keyed by it
        return value

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @field_validator("bus")
    @classmethod
    def _bus_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("nats://", "tls://")):
            raise ValueError("must start with nats:// (or tls://)")
        return value

    @field_validator("relay_url", "instance_relay_url")
    @classmethod
    def _ws_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("ws://", "wss://")):
            raise ValueError("must start with ws:// or wss://")
        if value:
            host_port = value.split("://", 1)[1].split("/", 1)[0]
            if ":" in host_port and not host_port.endswith("]"):
                parse_endpoint(host_port)
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.bus is not None and self.database is None:
            raise ValueError("bus: several instances share one PostgreSQL; set database too")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None
