"""A comparable snapshot of the host's network state, for "identical before and after" tests.

The snapshot holds, per section, normalised lines of what the tools print: the nftables
ruleset, iptables-save (v4 and v6), routes of all tables, policy rules, links, addresses,
qdiscs and the sysctls we touch. Normalising removes what changes by itself — packet and byte
counters, address lifetimes, timeouts, interface indexes — so two snapshots are equal exactly
when the configuration is.

This module only reads; it runs the tools through the funnel (logged at DEBUG).
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from higgs.osnet import sysctl
from higgs.osnet.errors import CommandError, OsnetError
from higgs.osnet.runner import Runner, SubprocessRunner

__all__ = ["TOUCHED_SYSCTLS", "HostState", "normalise", "snapshot"]

# Every sysctl the OS layer may change; add here when a module starts touching another one.
TOUCHED_SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
    "net.ipv4.conf.all.src_valid_mark",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.default.rp_filter",
)

_COMMANDS: dict[str, list[str]] = {
    "nft": ["nft", "list", "ruleset"],
    "iptables": ["iptables-save"],
    "ip6tables": ["ip6tables-save"],
    "routes4": ["ip", "-4", "route", "show", "table", "all"],
    "routes6": ["ip", "-6", "route", "show", "table", "all"],
    "rules4": ["ip", "-4", "rule", "show"],
    "rules6": ["ip", "-6", "rule", "show"],
    "links": ["ip", "-o", "link", "show"],
    "addresses": ["ip", "-o", "address", "show"],
    "qdiscs": ["tc", "qdisc", "show"],
}
# Sections whose line order carries no meaning (the kernel lists them in creation order).
_SORTED = {"routes4", "routes6", "links", "addresses", "qdiscs"}

_SUBS: dict[str, list[tuple[re.Pattern[str], str]]] = {
    "nft": [
        (re.compile(r"counter packets \d+ bytes \d+"), "counter"),
        (re.compile(r"(quota (?:over )?\d+ \S+) used \d+ \S+"), r"\1"),
        (re.compile(r" expires \S+"), ""),
    ],
    "iptables": [(re.compile(r"\[\d+:\d+\]"), "[0:0]")],
    "ip6tables": [(re.compile(r"\[\d+:\d+\]"), "[0:0]")],
    "routes6": [(re.compile(r" expires \d+sec"), "")],
    "routes4": [(re.compile(r" expires \d+sec"), "")],
    "links": [(re.compile(r"^\d+: "), "")],
    "addresses": [
        (re.compile(r"^\d+: "), ""),
        (re.compile(r"\s+valid_lft \S+ preferred_lft \S+"), ""),
        (re.compile(r"\\\s*$"), ""),
        # Duplicate address detection in progress: transient, not configuration.
        (re.compile(r" tentative\b"), ""),
    ],
}

log = logging.getLogger(__name__)


def normalise(section: str, text: str) -> tuple[str, ...]:
    """The comparable lines of one tool's output (see the module docstring)."""
    lines = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        for pattern, repl in _SUBS.get(section, ()):
            line = pattern.sub(repl, line)
        lines.append(" ".join(line.split()) if section in _SORTED else line.rstrip())
    return tuple(sorted(lines)) if section in _SORTED else tuple(lines)


@dataclass(frozen=True)
class HostState:
    sections: Mapping[str, tuple[str, ...]]

    def diff(self, after: HostState) -> str:
        """A readable unified diff per section ('' when equal)."""
        out: list[str] = []
        for name in sorted(set(self.sections) | set(after.sections)):
            a = list(self.sections.get(name, ()))
            b = list(after.sections.get(name, ()))
            if a != b:
                out += difflib.unified_diff(a, b, f"before/{name}", f"after/{name}", lineterm="")
        return "\n".join(out)


def snapshot(
    *,
    runner: Runner | None = None,
    netns: str | None = None,
    sysctls: Iterable[str] = TOUCHED_SYSCTLS,
) -> HostState:
    """Reads the host's (or ``netns``'s) state. A tool that is missing is recorded as such."""
    run = runner if runner is not None else SubprocessRunner(log_level=logging.DEBUG)
    prefix = [] if netns is None else ["ip", "netns", "exec", netns]
    sections: dict[str, tuple[str, ...]] = {}
    for name, argv in _COMMANDS.items():
        try:
            text = run.run([*prefix, *argv]).stdout
        except CommandError as exc:
            if exc.returncode is None:  # the tool is not installed
                sections[name] = (f"<{argv[0]} unavailable>",)
                continue
            raise
        sections[name] = normalise(name, text)
    values = []
    for key in sysctls:
        try:
            values.append(f"{key}={sysctl.read(key, runner=run, netns=netns)}")
        except OsnetError:
            values.append(f"{key}=<absent>")
    sections["sysctl"] = tuple(values)
    return HostState(sections)
