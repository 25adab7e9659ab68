"""The client's DNS configuration: point resolv.conf at the node's resolver, put it back later.

While connected, every name lookup must go through the tunnel to the node's resolver, or the
user's own ISP sees (and may answer) the queries: a DNS leak. We replace the resolver file and
journal how to put the old one back (content, mode, or the symlink it was).

How the file is written matters:

- It is written **in place** (truncate and write), not renamed over. ``ip netns exec NS``
  bind-mounts ``/etc/netns/NS/resolv.conf`` over ``/etc/resolv.conf`` (and containers do the
  same), and a rename onto a mount point fails with EBUSY; writing in place goes through the
  bind mount to the namespace's own file.
- A symlink (systemd-resolved's ``stub-resolv.conf``) is not written through: that would change
  the resolver's own file. The link is replaced by a regular file and re-created on restore.

The path is a setting (``resolv_conf``) so that tests and odd hosts can point elsewhere.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from higgs.osnet import undo as undo_ops
from higgs.osnet.changes import ChangeLog
from higgs.osnet.errors import OsnetError

__all__ = [
    "DEFAULT_RESOLV_CONF",
    "MARKER",
    "UNDO",
    "ResolverError",
    "read_nameservers",
    "render_resolv_conf",
    "set_nameservers",
]

DEFAULT_RESOLV_CONF = Path("/etc/resolv.conf")
MARKER = "# higgsvpn: DNS through the tunnel; the previous file comes back on disconnect"


class ResolverError(OsnetError):
    """The resolver file cannot be read or written."""


def render_resolv_conf(servers: Sequence[str], search: Sequence[str] = ()) -> str:
    """The resolv.conf text naming ``servers`` (validated IP addresses) and nothing else."""
    if not servers:
        raise ValueError("at least one nameserver is needed")
    lines = [MARKER]
    for server in servers:
        lines.append(f"nameserver {ipaddress.ip_address(server.strip())}")
    if search:
        lines.append("search " + " ".join(search))
    # A short timeout: the only server is across the tunnel; no fallback to a leaky one.
    lines.append("options timeout:2 attempts:2")
    return "\n".join(lines) + "\n"


def read_nameservers(path: Path = DEFAULT_RESOLV_CONF) -> list[str]:
    """The ``nameserver`` entries of a resolv.conf (for status and tests)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ResolverError(f"cannot read {path}: {exc.strerror}") from exc
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            out.append(parts[1])
    return out


def _write_in_place(path: Path, content: str, mode: int | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        os.write(fd, content.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ResolvUndo:
    path: str
    kind: Literal["absent", "symlink", "file"]
    target: str | None = None  # symlink: where it pointed
    content: str | None = None  # file: what it held
    mode: int | None = None


def _previous(path: Path) -> dict[str, Any]:
    """What the file is now, as the undo's parameters."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return UNDO.record(ResolvUndo(str(path), "absent"))
    except OSError as exc:
        raise ResolverError(f"cannot inspect {path}: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        return UNDO.record(ResolvUndo(str(path), "symlink", target=os.readlink(path)))
    if not stat.S_ISREG(st.st_mode):
        raise ResolverError(f"{path} is neither a file nor a symlink; refusing to change it")
    try:
        content = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ResolverError(f"cannot read {path}: {exc}") from exc
    return UNDO.record(
        ResolvUndo(str(path), "file", content=content, mode=stat.S_IMODE(st.st_mode))
    )


def _restore(params: ResolvUndo, ctx: undo_ops.UndoContext) -> None:
    path = Path(params.path)
    kind = params.kind
    if kind == "symlink":
        if path.is_symlink() and os.readlink(path) == params.target:
            return
        path.unlink(missing_ok=True)
        os.symlink(str(params.target), path)
    elif kind == "absent":
        if path.exists() and not path.is_symlink() and path.read_text().startswith(MARKER):
            path.unlink()
    else:
        if path.is_symlink():
            path.unlink()
        _write_in_place(path, str(params.content), params.mode)


UNDO = undo_ops.UndoOp("resolv_restore", ResolvUndo, _restore)


def set_nameservers(
    journal: ChangeLog,
    servers: Sequence[str],
    *,
    path: Path = DEFAULT_RESOLV_CONF,
    search: Sequence[str] = (),
) -> None:
    """Makes ``servers`` the only resolvers; the journal knows how to put the old file back."""
    content = render_resolv_conf(servers, search)
    undo = _previous(path)

    def apply() -> None:
        try:
            if path.is_symlink():
                path.unlink()
            _write_in_place(path, content, 0o644)
        except OSError as exc:
            raise ResolverError(f"cannot write {path}: {exc.strerror}") from exc

    journal.step(f"resolv.conf {path} -> {', '.join(servers)}", undo, apply)
