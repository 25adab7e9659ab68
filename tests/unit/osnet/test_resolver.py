from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from higgs.osnet import resolver
from higgs.osnet.journal import Journal

BEFORE = "# the user's own\nnameserver 192.0.2.53\nsearch corp.example\n"


def _journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "state" / "journal.json")


def test_render_names_only_the_given_servers() -> None:
    text = resolver.render_resolv_conf(["10.77.0.1"])
    assert text.startswith(resolver.MARKER)
    assert [ln for ln in text.splitlines() if ln.startswith("nameserver")] == [
        "nameserver 10.77.0.1"
    ]
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6"):
        resolver.render_resolv_conf(["10.77.0.1; rm -rf /"])
    with pytest.raises(ValueError, match="at least one"):
        resolver.render_resolv_conf([])


def test_regular_file_replaced_and_restored_with_its_mode(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(BEFORE)
    conf.chmod(0o640)
    with _journal(tmp_path) as journal:
        resolver.set_nameservers(journal, ["10.77.0.1"], path=conf)
        assert resolver.read_nameservers(conf) == ["10.77.0.1"]
        assert len(journal) == 1
        journal.undo_all()
    assert conf.read_text() == BEFORE
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640


def test_symlink_is_replaced_not_written_through_and_comes_back(tmp_path: Path) -> None:
    target = tmp_path / "stub-resolv.conf"
    target.write_text(BEFORE)
    conf = tmp_path / "resolv.conf"
    conf.symlink_to(target)
    with _journal(tmp_path) as journal:
        resolver.set_nameservers(journal, ["10.77.0.1"], path=conf)
        assert not conf.is_symlink()
        assert target.read_text() == BEFORE, "the resolver's own file was written through"
        journal.undo_all()
    assert conf.is_symlink()
    assert os.readlink(conf) == str(target)


def test_absent_file_is_removed_again(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    with _journal(tmp_path) as journal:
        resolver.set_nameservers(journal, ["10.77.0.1", "fd00::1"], path=conf)
        assert resolver.read_nameservers(conf) == ["10.77.0.1", "fd00::1"]
        journal.undo_all()
    assert not conf.exists()


def test_crash_then_replay_by_a_new_process_restores(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(BEFORE)
    journal = _journal(tmp_path)
    resolver.set_nameservers(journal, ["10.77.0.1"], path=conf)
    journal.close()  # the process "dies" without undoing
    assert resolver.read_nameservers(conf) == ["10.77.0.1"]
    # A fresh interpreter knows the undo operation as soon as it imports the resolver.
    code = textwrap.dedent(
        f"""
        import higgs.osnet.resolver
        from pathlib import Path
        from higgs.osnet.journal import Journal
        with Journal(Path({str(tmp_path / "state" / "journal.json")!r})) as j:
            print(j.replay())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    assert conf.read_text() == BEFORE


def test_two_changes_undo_in_order(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(BEFORE)
    with _journal(tmp_path) as journal:
        resolver.set_nameservers(journal, ["10.77.0.1"], path=conf)
        resolver.set_nameservers(journal, ["10.78.0.1"], path=conf)  # moved to another node
        assert resolver.read_nameservers(conf) == ["10.78.0.1"]
        journal.undo_all()
    assert conf.read_text() == BEFORE


@pytest.mark.root
def test_bind_mounted_file_is_written_in_place(tmp_path: Path) -> None:
    """What `ip netns exec` does: /etc/netns/NS/resolv.conf bind-mounted over the path.
    A rename onto a mount point fails (EBUSY); the in-place write reaches the source file."""
    source = tmp_path / "netns-resolv.conf"
    source.write_text(BEFORE)
    mountpoint = tmp_path / "resolv.conf"
    mountpoint.write_text("# hidden by the bind mount\n")
    code = textwrap.dedent(
        f"""
        import subprocess
        from pathlib import Path
        from higgs.osnet import resolver
        from higgs.osnet.journal import Journal
        subprocess.run(["mount", "--bind", {str(source)!r}, {str(mountpoint)!r}], check=True)
        with Journal(Path({str(tmp_path / "state" / "journal.json")!r})) as j:
            resolver.set_nameservers(j, ["10.77.0.1"], path=Path({str(mountpoint)!r}))
            print(Path({str(source)!r}).read_text().count("nameserver 10.77.0.1"))
            j.undo_all()
        """
    )
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
    assert source.read_text() == BEFORE
    assert mountpoint.read_text() == "# hidden by the bind mount\n"
