"""Everything we create on a host carries one name set (STYLE.md practice 3).

One :class:`OwnedNames` per program instance: the WireGuard interface, the nftables table, the
iptables chain prefix, the routing table id and fwmark, the policy-rule priorities, the tc
major handle and the comment marker used where a shared chain must be touched. The sweep
deletes exactly these and nothing else, so several instances (and several test runs) can
share a host as long as their instance names differ.

Numbers are derived from ``role:instance`` so that they are stable across restarts (the sweep
needs no state) and almost always distinct between instances (16 bits of CRC-32: tests use
random instance names; two instances whose numbers collide would sweep each other's rules).
Marks and table ids carry the prefix ``0x6867`` ("hg"), far from what other software uses.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from higgs.osnet.errors import OsnetError

__all__ = [
    "DEFAULT_INTERFACE",
    "IFNAME_MAX",
    "WG_SOCKET_DIR",
    "OwnedNames",
    "Role",
    "validate_ifname",
]

Role = Literal["node", "client"]

IFNAME_MAX = 15
WG_SOCKET_DIR = Path("/var/run/wireguard")
_INSTANCE_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,11}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")
# "hg" in ASCII; greppable in `ip rule` (as 0x6867....) and in tables of fwmarks.
_MARK_BASE = 0x68670000
# The one default WireGuard interface per role (the settings' default too); it is also the
# stem of the role's nft table and chains, so `ip link`, `nft list tables` and the socket
# directory all show the same name. Distinct per role: a node and a client on one host.
DEFAULT_INTERFACE: dict[str, str] = {"node": "higgsnode", "client": "higgsvpn"}
_DEFAULT_IFNAME = DEFAULT_INTERFACE


def validate_ifname(name: str) -> str:
    """Interface names: at most 15 bytes, no slash/space/colon; dashes and dots are fine."""
    if not _IFNAME_RE.match(name) or name in (".", ".."):
        raise OsnetError(
            f"invalid interface name {name!r}: use 1-15 letters, digits, '_', '-' or '.'"
        )
    return name


@dataclass(frozen=True)
class OwnedNames:
    role: Role
    instance: str
    interface: str

    @classmethod
    def for_instance(
        cls, role: Role, instance: str = "", interface: str | None = None
    ) -> OwnedNames:
        if instance and not _INSTANCE_RE.match(instance):
            raise OsnetError(
                f"invalid instance name {instance!r}: 1-12 of a-z, 0-9, '_' (starting alnum)"
            )
        if interface is None:
            # "hn-<instance>" / "hv-<instance>": at most 15 bytes with a 12-byte instance.
            interface = f"h{role[0] if role == 'node' else 'v'}-{instance}" if instance else None
            interface = interface or _DEFAULT_IFNAME[role]
        return cls(role, instance, validate_ifname(interface))

    @property
    def _suffix(self) -> str:
        return f"_{self.instance}" if self.instance else ""

    @property
    def _hash(self) -> int:
        return zlib.crc32(f"{self.role}:{self.instance}".encode()) & 0xFFFF

    @property
    def nft_table(self) -> str:
        """Our one ``inet`` table: ``higgsnode`` / ``higgsvpn`` (+ ``_<instance>``)."""
        return _DEFAULT_IFNAME[self.role] + self._suffix

    @property
    def chain_prefix(self) -> str:
        """Prefix of our iptables chains (chain names are at most 28 characters)."""
        return (_DEFAULT_IFNAME[self.role] + self._suffix).upper()

    @property
    def comment(self) -> str:
        """Marker for anything of ours in a shared place (iptables jump rules, nft comments)."""
        return f"higgs:{self.role}" + (f":{self.instance}" if self.instance else "")

    @property
    def fwmark(self) -> int:
        """The mark WireGuard puts on its own packets (like wg-quick's 51820)."""
        return _MARK_BASE | self._hash

    @property
    def table_id(self) -> int:
        """Our routing table (same number as the fwmark, as wg-quick does)."""
        return self.fwmark

    @property
    def rule_priority(self) -> int:
        """First of our two policy-rule priorities (the ``suppress_prefixlength`` rule);
        ``rule_priority + 1`` holds the ``not fwmark`` rule. Below main's 32766."""
        return 5000 + (self._hash % 2000) * 2

    @property
    def rule_priorities(self) -> tuple[int, int]:
        return (self.rule_priority, self.rule_priority + 1)

    @property
    def tc_major(self) -> int:
        """tc major handle for qdiscs we add to shared interfaces (16 bits, never 0/ffff)."""
        return 0x6800 | (self._hash & 0xFF)

    @property
    def wg_socket(self) -> Path:
        """wireguard-go's control socket; the directory is shared by all namespaces."""
        return WG_SOCKET_DIR / f"{self.interface}.sock"
