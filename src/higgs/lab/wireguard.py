"""Stock WireGuard in the lab: keys from ``wg``, ``wireguard-go`` started inside a namespace.

This machine has no WireGuard kernel module, so interfaces are ``wireguard-go`` processes,
run with ``-f`` (foreground) under ``ip netns exec`` so the lab holds their PID. Their control
sockets live in ``/var/run/wireguard/<ifname>.sock`` -- one directory for all namespaces --
which is why interface names come from :meth:`Lab.ifname` (unique per run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import LabError
from .host import Host
from .lab import WG_RUN_DIR
from .netns import run
from .procs import LabProcess

__all__ = ["KeyPair", "new_keypair", "start_wireguard_go", "wg_set", "wg_show"]


@dataclass(frozen=True)
class KeyPair:
    private: str
    public: str

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public!r})"  # never print the private key


def new_keypair() -> KeyPair:
    private = run(["wg", "genkey"]).stdout.strip()
    public = run(["wg", "pubkey"], input=private + "\n").stdout.strip()
    return KeyPair(private=private, public=public)


def start_wireguard_go(
    host: Host, ifname: str, *, timeout: float = 10.0, attempts: int = 3
) -> LabProcess:
    """Start ``wireguard-go -f ifname`` in ``host``'s namespace; wait for its control socket.

    Retried when wireguard-go cannot create its socket: the socket directory is shared by
    everyone on the machine, and seen disappearing under concurrent runs between
    wireguard-go's own mkdir and its listen.
    """
    sock = WG_RUN_DIR / f"{ifname}.sock"
    if sock.exists():
        raise LabError(f"{sock} already exists: is {ifname} someone else's interface?")
    for attempt in range(1, attempts + 1):
        WG_RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        proc = host.popen(["wireguard-go", "-f", ifname], name=f"wireguard-go-{ifname}")
        deadline = time.monotonic() + timeout
        while not sock.exists():
            if not proc.alive():
                log = proc.log_text().strip()
                if "uapi socket" in log and attempt < attempts:
                    break
                raise LabError(
                    f"wireguard-go {ifname} on {host.role} exited with"
                    f" {proc.popen.returncode}: {log[-1500:]}"
                )
            if time.monotonic() > deadline:
                raise LabError(f"wireguard-go {ifname} on {host.role}: no socket after {timeout} s")
            time.sleep(0.02)
        else:
            return proc
    raise AssertionError("unreachable")  # the last attempt returns or raises


def wg_set(host: Host, ifname: str, *args: str, private_key: str | None = None) -> None:
    """``wg set ifname [private-key <stdin>] args...`` inside ``host``'s namespace."""
    argv = ["wg", "set", ifname]
    if private_key is not None:
        # Through stdin, so the key is never in an argv or a file.
        argv += ["private-key", "/dev/stdin"]
    host.run([*argv, *args], input=(private_key + "\n") if private_key is not None else None)


def wg_show(host: Host, ifname: str, what: str = "dump") -> str:
    return host.run(["wg", "show", ifname, what]).stdout
