"""The node's typed settings: what an operator may configure, validated before the host is touched.

Loaded by :func:`load_node_settings` from (in rising precedence) a TOML file, environment
variables ``HIGGSNODE_<FIELD>`` (nested: ``HIGGSNODE_DNS__UPSTREAMS``) and command-line flags.
Every key is described in docs/node.md.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from higgs.common.config import load_settings
from higgs.osnet.names import DEFAULT_INTERFACE

__all__ = [
    "DEFAULT_STATE_DIR",
    "DnsSettings",
    "LimitSettings",
    "NodeSettings",
    "ProtectionSettings",
    "ShapingSettings",
    "Upstream",
    "default_subnet_v6",
    "load_node_settings",
    "parse_upstream",
    "system_resolvers",
]

DEFAULT_STATE_DIR = Path("/var/lib/higgsnode")
ENV_PREFIX = "HIGGSNODE_"

# Linux allows any byte but '/', whitespace and ':' in a name; we are stricter so that names are
# safe in nft/iptables comments and in /var/run/wireguard/<name>.sock. Dashes and dots are fine.
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")
_COUNTRY_RE = re.compile(r"^[A-Z]{2}$")


_ULA = ipaddress.IPv6Network("fc00::/7")


def default_subnet_v6(public_key: str) -> ipaddress.IPv6Network:
    """``fdXX:XXXX:XXXX::/64``: an RFC 4193 unique local prefix whose 40-bit global ID is the
    start of SHA-256 of the node's public key (RFC 4193 asks for a pseudo-random ID; a hash of
    the key is one, and the same key always gives the same prefix)."""
    global_id = hashlib.sha256(public_key.encode()).digest()[:5]
    prefix = bytes([0xFD]) + global_id + bytes(10)
    return ipaddress.IPv6Network((prefix, 64))


class Upstream(BaseModel):
    """One DNS upstream: plain DNS over UDP (TCP on truncation), TCP only, or DNS-over-HTTPS."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["udp", "tcp", "https"]
    host: str
    port: int
    url: str | None = None  # the full URL for https

    def label(self) -> str:
        return self.url if self.url else f"{self.kind}://{self._hostport()}"

    def _hostport(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def parse_upstream(text: str) -> Upstream:
    """Parses ``10.0.0.1``, ``10.0.0.1:5353``, ``udp://h:p``, ``tcp://h:p``, ``https://h/dns-query``."""
    text = text.strip()
    if not text:
        raise ValueError("an upstream is empty")
    if "://" not in text:
        try:  # a bare address, IPv6 ones without brackets included
            return Upstream(kind="udp", host=str(ipaddress.ip_address(text)), port=53)
        except ValueError:
            text = "udp://" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("udp", "tcp", "https", "http"):
        raise ValueError(f"upstream {text!r}: scheme must be udp, tcp or https")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"upstream {text!r}: bad port") from exc
    host = parts.hostname or ""
    if not host:
        raise ValueError(f"upstream {text!r}: no host")
    if scheme == "http":
        # Cleartext DNS-over-HTTP leaks every name; allowed on loopback only (local proxies, tests).
        if not _is_loopback(host):
            raise ValueError(f"upstream {text!r}: DNS over HTTP must use https://")
        return Upstream(kind="https", host=host, port=port or 80, url=text)
    if scheme == "https":
        return Upstream(kind="https", host=host, port=port or 443, url=text)
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        # A resolver given by name would need a resolver to find it.
        raise ValueError(f"upstream {text!r}: plain DNS upstreams must be IP addresses") from exc
    if parts.path not in ("", "/"):
        raise ValueError(f"upstream {text!r}: plain DNS upstreams take no path")
    return Upstream(kind=scheme, host=host, port=port or 53)


def system_resolvers(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[Upstream]:
    """The nameservers of the host's resolv.conf (the default when no upstream is configured)."""
    out: list[Upstream] = []
    try:
        lines = resolv_conf.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                out.append(parse_upstream(fields[1].split("%")[0]))
            except ValueError:
                continue
    return out


class DnsSettings(BaseModel):
    """The DNS forwarder that listens on the node's tunnel address."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # Empty means: the nameservers of /etc/resolv.conf at start.
    upstreams: list[Upstream] = Field(default_factory=list)
    port: int = Field(default=53, ge=1, le=65535)
    timeout_s: float = Field(default=2.0, gt=0, le=30)
    max_inflight: int = Field(default=256, ge=1, le=65536)

    @field_validator("upstreams", mode="before")
    @classmethod
    def _parse_upstreams(cls, value: Any) -> Any:
        if isinstance(value, str):  # from the environment: comma separated
            value = [v for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            return [parse_upstream(v) if isinstance(v, str) else v for v in value]
        return value


class ShapingSettings(BaseModel):
    """Traffic limits the owner sets; 0 means unlimited."""

    model_config = ConfigDict(extra="forbid")

    total_down_mbit: float = Field(default=0, ge=0)
    total_up_mbit: float = Field(default=0, ge=0)
    per_client_mbit: float = Field(default=0, ge=0)
    monthly_cap_gb: float = Field(default=0, ge=0)


class LimitSettings(BaseModel):
    """Per-client connection limits (owner protection): a client that opens connections
    faster, or holds more at once, than a home connection should carry is cut off at the
    excess. 0 means unlimited."""

    model_config = ConfigDict(extra="forbid")

    # Concurrent connections per client address; the excess is rejected.
    connections_per_client: int = Field(default=512, ge=0, le=1_000_000)
    # New connections per second per client address, and the burst allowed above the rate;
    # the excess is dropped (the client's TCP retries once the rate allows).
    new_connections_per_s: int = Field(default=50, ge=0, le=1_000_000)
    new_connections_burst: int = Field(default=100, ge=1, le=1_000_000)


class ProtectionSettings(BaseModel):
    """Owner protection is on by default; these are the owner's exceptions and port blocks."""

    model_config = ConfigDict(extra="forbid")

    # Networks clients may reach although they lie in a blocked range (the owner's LAN,
    # private/CGNAT/link-local, the node's own addresses), e.g. a shared printer.
    allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(default_factory=list)
    # Outbound destination ports refused for clients (SMTP: spam would be sent from the
    # owner's address).
    blocked_tcp_ports: list[int] = Field(default_factory=lambda: [25])
    blocked_udp_ports: list[int] = Field(default_factory=list)

    @field_validator("blocked_tcp_ports", "blocked_udp_ports")
    @classmethod
    def _ports(cls, value: list[int]) -> list[int]:
        bad = [p for p in value if not 1 <= p <= 65535]
        if bad:
            raise ValueError(f"ports must be 1..65535, got {bad}")
        return sorted(set(value))


class DashboardSettings(BaseModel):
    """The owner's page and the Prometheus exporter (``/metrics``), on one loopback listener."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    listen: str = Field(default="127.0.0.1:9586", description="loopback host:port")

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        host = host.strip("[]")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not loopback:
            raise ValueError("must be a loopback host:port, e.g. 127.0.0.1:9586")
        return value


class NodeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    server: str | None = None
    enroll_key: SecretStr | None = None
    state_dir: Path = DEFAULT_STATE_DIR
    interface: str = DEFAULT_INTERFACE["node"]
    listen_port: int = Field(default=51820, ge=1, le=65535)
    tunnel_subnet: ipaddress.IPv4Network = ipaddress.IPv4Network("10.77.0.0/24")
    # "auto": forward clients' IPv6 with NAT66 when the uplink has a global IPv6 address and
    # an IPv6 default route; "off" (or no global IPv6): IPv6 from clients is rejected.
    ipv6: Literal["auto", "off"] = "auto"
    # The clients' IPv6 prefix (unique local); unset: derived from the node's public key
    # (see default_subnet_v6), so it is stable across restarts and differs between nodes.
    tunnel_subnet_v6: ipaddress.IPv6Network | None = None
    # "host:port" announced to clients for direct mode (e.g. the router's public IP and the
    # forwarded port). The node cannot see its router's port forward, so it is configured.
    endpoint: str | None = None
    # Ask the home router to map listen_port (higgs.node.portmap): "auto" tries PCP, NAT-PMP,
    # UPnP-IGD in that order; "off" when the owner forwarded the port by hand (or has none).
    port_mapping: Literal["auto", "pcp", "natpmp", "upnp", "off"] = "auto"
    # Requested lifetime of the mapping; it is renewed at half of what the router grants.
    port_mapping_lifetime_s: int = Field(default=3600, ge=120, le=86400)
    max_clients: int = Field(default=32, ge=1, le=1000)
    bandwidth_mbps: int = Field(default=50, ge=1, le=100_000)
    country: str | None = None
    region: str | None = None
    firewall: Literal["auto", "nft", "iptables"] = "auto"
    # Put our rules back when another program removes them (higgs.node.rulewatch); changes
    # are seen at once through nft monitor, and checked every firewall_check_s where it
    # cannot see them (legacy iptables).
    firewall_watch: bool = True
    firewall_check_s: float = Field(default=2.0, ge=0.2, le=60)
    # None: computed from the uplink's MTU and the paths served (higgs.node.mtu), and
    # followed when the uplink's MTU changes; a number is used as it is.
    mtu: int | None = Field(default=None, ge=1280, le=9000)
    # An IP address the node pings (don't-fragment) to find its path MTU at start and after
    # uplink changes. No default: the owner picks a host that answers pings.
    mtu_probe_target: str | None = None
    server_timeout_s: float = Field(default=10.0, gt=0, le=120)
    dns: DnsSettings = Field(default_factory=DnsSettings)
    shaping: ShapingSettings = Field(default_factory=ShapingSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    protection: ProtectionSettings = Field(default_factory=ProtectionSettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)

    @field_validator("server")
    @classmethod
    def _check_server(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL, e.g. https://boson.example")
        return value.rstrip("/")

    @field_validator("enroll_key")
    @classmethod
    def _check_enroll_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("hge_"):
            raise ValueError("an enrollment key starts with 'hge_' (bosonserver enroll create)")
        return value

    @field_validator("interface")
    @classmethod
    def _check_interface(cls, value: str) -> str:
        if not _IFNAME_RE.match(value) or value in (".", ".."):
            raise ValueError("1-15 characters of letters, digits, '_', '-' or '.'")
        return value

    @field_validator("tunnel_subnet")
    @classmethod
    def _check_subnet(cls, value: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
        if value.prefixlen > 29:
            raise ValueError("the tunnel subnet needs room for clients: /29 or larger")
        if not value.is_private:
            raise ValueError("the tunnel subnet must be a private range, e.g. 10.77.0.0/24")
        return value

    @field_validator("tunnel_subnet_v6")
    @classmethod
    def _check_subnet_v6(cls, value: ipaddress.IPv6Network | None) -> ipaddress.IPv6Network | None:
        if value is None:
            return None
        if not value.subnet_of(_ULA):
            raise ValueError(
                "must be a unique local IPv6 prefix (fc00::/7), e.g. fd12:3456:789a::/64"
            )
        if not 48 <= value.prefixlen <= 112:
            raise ValueError("prefix length must be between /48 and /112, e.g. /64")
        return value

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        host, sep, port = value.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError("must be 'public-ip:port', e.g. 203.0.113.7:51820")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not re.match(r"^[A-Za-z0-9.\-]+$", host):
                raise ValueError("must be 'public-ip:port' or 'hostname:port'") from None
        return value

    @field_validator("mtu_probe_target")
    @classmethod
    def _check_probe_target(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            # A name would need a resolver; the owner should know exactly where pings go.
            raise ValueError("must be an IP address, e.g. 192.0.2.10") from None
        if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
            raise ValueError("must be a unicast address beyond this machine")
        return str(ip)

    @field_validator("country")
    @classmethod
    def _check_country(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.upper()
        if not _COUNTRY_RE.match(value):
            raise ValueError("an ISO 3166 two-letter code, e.g. DE")
        return value

    @property
    def node_address(self) -> ipaddress.IPv4Interface:
        """The node's own tunnel address: the first host of the subnet (``.1``)."""
        first = next(self.tunnel_subnet.hosts())
        return ipaddress.IPv4Interface(f"{first}/{self.tunnel_subnet.prefixlen}")

    def subnet_v6(self, public_key: str) -> ipaddress.IPv6Network:
        """The clients' IPv6 prefix: the configured one, else derived from the public key."""
        return self.tunnel_subnet_v6 or default_subnet_v6(public_key)

    def dns_upstreams(self) -> list[Upstream]:
        return list(self.dns.upstreams) or system_resolvers()


def load_node_settings(
    config: Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> NodeSettings:
    """Loads and validates; raises ConfigError naming the field on bad input."""
    return load_settings(
        NodeSettings, file=config, env_prefix=ENV_PREFIX, environ=environ, overrides=overrides
    )
