"""wg command lines and `wg show dump` parsing, through the fake funnel (no root)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from higgs.common.keys import PrivateKey
from higgs.osnet.journal import Journal
from higgs.osnet.runner import RecordingRunner
from higgs.osnet.wireguard import Peer, WireGuard, WireGuardError, parse_dump, parse_uapi

PEER = PrivateKey.generate().public_b64()

# Captured from `wg show hgs1 dump` against wireguard-go 0.0.20220316 (private key replaced).
DUMP = (
    "PRIVATEKEYPLACEHOLDERxxxxxxxxxxxxxxxxxxxxxx=\tfCRRs2llIXCW3JwKya049vurz2xBYXfCYzvQ2D5TOjQ=\t"
    "51999\t0x1234\n"
    "rDzT6v+6/ox+lUpl0b8kyBEgl2dJnzHE8imWMQXFOEc=\t(none)\t10.0.0.2:51820\t"
    "10.9.0.2/32,fd00:9::2/128\t1764081000\t1484\t1636\t25\n"
    "SzYHlnKBFfDnbRf+qVpm+Ik6V2tG0J5r6Cr7lk4ShEo=\t(none)\t(none)\t(none)\t0\t0\t0\toff\n"
)


@pytest.fixture
def runner() -> RecordingRunner:
    return RecordingRunner()


@pytest.fixture
def wg(tmp_path: Path, runner: RecordingRunner) -> Iterator[WireGuard]:
    with Journal(tmp_path / "journal.json", runner=runner) as journal:
        yield WireGuard("hg-test.1", journal=journal, netns="ns1")


def test_private_key_goes_on_stdin_never_in_argv(wg: WireGuard, runner: RecordingRunner) -> None:
    key = PrivateKey.generate()
    wg.configure(key, listen_port=51820, fwmark=0x68670001)
    assert runner.commands == [
        ["ip", "netns", "exec", "ns1", "wg", "set", "hg-test.1", "private-key", "/dev/stdin",
         "listen-port", "51820", "fwmark", "0x68670001"],
    ]  # fmt: skip
    assert runner.inputs == [key.b64() + "\n"]
    assert key.b64() not in " ".join(runner.calls[0])


def test_set_peer_is_one_idempotent_wg_set(wg: WireGuard, runner: RecordingRunner) -> None:
    wg.set_peer(Peer(PEER, ("10.9.0.2", "fd00:9::/64"), "[fd00::2]:51820", 25))
    wg.set_peer(Peer(PEER, ("10.9.0.3/32",)))
    wg.remove_peer(PEER)
    assert runner.commands == [
        ["ip", "netns", "exec", "ns1", "wg", "set", "hg-test.1", "peer", PEER,
         "allowed-ips", "10.9.0.2/32,fd00:9::/64", "endpoint", "[fd00::2]:51820",
         "persistent-keepalive", "25"],
        ["ip", "netns", "exec", "ns1", "wg", "set", "hg-test.1", "peer", PEER,
         "allowed-ips", "10.9.0.3/32", "persistent-keepalive", "off"],
        ["ip", "netns", "exec", "ns1", "wg", "set", "hg-test.1", "peer", PEER, "remove"],
    ]  # fmt: skip


def test_preshared_key_goes_on_stdin(wg: WireGuard, runner: RecordingRunner) -> None:
    psk = PrivateKey.generate().b64()
    wg.set_peer(Peer(PEER, ("10.9.0.2/32",), preshared_key=psk))
    assert runner.calls[0][-2:] == ("preshared-key", "/dev/stdin")
    assert runner.inputs == [psk + "\n"]
    assert psk not in repr(Peer(PEER, preshared_key=psk))


@pytest.mark.parametrize(
    "peer",
    [
        Peer("not-a-key"),
        Peer(PEER, ("10.0.0.300/32",)),
        Peer(PEER, endpoint="10.0.0.1"),
        Peer(PEER, endpoint="10.0.0.1:99999"),
        Peer(PEER, endpoint="[fd00::1:51820"),
    ],
)
def test_bad_peer_is_a_clear_error_and_runs_nothing(
    wg: WireGuard, runner: RecordingRunner, peer: Peer
) -> None:
    with pytest.raises((WireGuardError, ValueError)):
        wg.set_peer(peer)
    assert runner.calls == []


def test_dump_is_parsed_into_typed_peers(wg: WireGuard, runner: RecordingRunner) -> None:
    runner.script(["ip", "netns", "exec", "ns1", "wg", "show"], stdout=DUMP)
    dump = wg.dump()
    assert dump.public_key == "fCRRs2llIXCW3JwKya049vurz2xBYXfCYzvQ2D5TOjQ="
    assert (dump.listen_port, dump.fwmark) == (51999, 0x1234)
    first = dump.peer("rDzT6v+6/ox+lUpl0b8kyBEgl2dJnzHE8imWMQXFOEc=")
    assert first is not None
    assert first.endpoint == "10.0.0.2:51820"
    assert first.allowed_ips == ("10.9.0.2/32", "fd00:9::2/128")
    assert (first.latest_handshake, first.rx_bytes, first.tx_bytes) == (1764081000, 1484, 1636)
    assert first.persistent_keepalive == 25
    second = dump.peers[1]
    assert (second.endpoint, second.allowed_ips, second.latest_handshake) == (None, (), None)
    assert second.persistent_keepalive == 0
    assert "PRIVATEKEY" not in repr(dump)


_KEY = PrivateKey.generate()


def _hex(b64key: str) -> str:
    return base64.b64decode(b64key).hex()


# What wireguard-go answers to get=1 for the interface of DUMP (its own key: DUMP's is hidden).
UAPI = (
    f"private_key={_KEY.raw.hex()}\nlisten_port=51999\nfwmark=4660\n"
    f"public_key={_hex('rDzT6v+6/ox+lUpl0b8kyBEgl2dJnzHE8imWMQXFOEc=')}\n"
    "endpoint=10.0.0.2:51820\nlast_handshake_time_sec=1764081000\n"
    "last_handshake_time_nsec=5000\ntx_bytes=1636\nrx_bytes=1484\n"
    "persistent_keepalive_interval=25\nprotocol_version=1\n"
    "allowed_ip=10.9.0.2/32\nallowed_ip=fd00:9::2/128\n"
    f"public_key={_hex('SzYHlnKBFfDnbRf+qVpm+Ik6V2tG0J5r6Cr7lk4ShEo=')}\n"
    "last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n"
    "persistent_keepalive_interval=0\nprotocol_version=1\n"
    "errno=0\n\n"
)


def test_uapi_answer_reads_as_the_dump_does() -> None:
    got = parse_uapi(UAPI)
    want = parse_dump(DUMP)
    assert got.public_key == _KEY.public_b64()
    assert (got.listen_port, got.fwmark, got.peers) == (want.listen_port, want.fwmark, want.peers)


@pytest.mark.parametrize(
    "text", ["", "errno=1\n\n", "garbage\nerrno=0\n", "listen_port=x\nerrno=0\n"]
)
def test_malformed_uapi_answer_is_a_clear_error(text: str) -> None:
    with pytest.raises(WireGuardError):
        parse_uapi(text)


@pytest.mark.parametrize("text", ["", "a\tb\n", DUMP + "short\tline\n"])
def test_malformed_dump_is_a_clear_error(text: str) -> None:
    with pytest.raises(WireGuardError):
        parse_dump(text)


def test_interface_names_are_validated(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.json", runner=RecordingRunner()) as journal:
        for bad in ("", "a" * 16, "has space", "a/b", "x:y"):
            with pytest.raises(Exception, match="invalid interface name"):
                WireGuard(bad, journal=journal)


def test_kernel_module_is_tried_first_and_journaled_before(
    tmp_path: Path, runner: RecordingRunner
) -> None:
    with Journal(tmp_path / "journal.json", runner=runner) as journal:
        wg = WireGuard("hgunit-k0", journal=journal)
        wg.create()
        assert wg.backend_used == "kernel"
        assert runner.commands == [["ip", "link", "add", "dev", "hgunit-k0", "type", "wireguard"]]
        assert [e.undo for e in journal.entries] == [
            {"op": "link_delete", "name": "hgunit-k0", "netns": None}
        ]
        wg.destroy()
        assert runner.commands[-1] == ["ip", "link", "delete", "dev", "hgunit-k0"]
        assert len(journal) == 0


def test_without_the_module_wireguard_go_is_spawned_and_a_dead_daemon_is_undone(
    tmp_path: Path, runner: RecordingRunner
) -> None:
    runner.script(["ip", "link", "add"], returncode=2, stderr="Error: Unknown device type.\n")
    with Journal(tmp_path / "journal.json", runner=runner) as journal:
        wg = WireGuard("hgunit-u0", journal=journal)
        # The fake funnel's PID belongs to no process: the daemon "exited at start".
        with pytest.raises(WireGuardError, match="exited at start"):
            wg.create()
        attempt = [
            ["wireguard-go", "-f", "hgunit-u0"],
            ["ip", "link", "delete", "dev", "hgunit-u0"],  # the rollback
        ]
        assert runner.commands == [
            ["ip", "link", "add", "dev", "hgunit-u0", "type", "wireguard"],
            *attempt * 3,  # started again: the shared socket directory can vanish under it
        ]
        assert len(journal) == 0


def test_a_kernel_error_other_than_unsupported_is_not_papered_over(
    tmp_path: Path, runner: RecordingRunner
) -> None:
    runner.script(
        ["ip", "link", "add"], returncode=2, stderr="RTNETLINK answers: Permission denied"
    )
    with Journal(tmp_path / "journal.json", runner=runner) as journal:
        with pytest.raises(WireGuardError, match="Permission denied"):
            WireGuard("hgunit-p0", journal=journal).create()
        assert len(runner.calls) == 1
        assert len(journal) == 0


@pytest.fixture
def sock_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short socket directory of our own (a UNIX socket path has at most 107 bytes)."""
    import shutil
    import tempfile

    from higgs.osnet import procs, wireguard

    path = Path(tempfile.mkdtemp(prefix="hgwg", dir="/tmp"))
    monkeypatch.setattr(wireguard, "WG_SOCKET_DIR", path)
    monkeypatch.setattr(procs, "is_running", lambda pid, start: True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_configuring_waits_until_wireguard_go_listens_not_until_its_socket_exists(
    tmp_path: Path, sock_dir: Path, runner: RecordingRunner
) -> None:
    """wireguard-go binds its socket before it listens; a `wg set` in between is refused,
    deletes the socket and fails with "Protocol not supported" (seen in the soak): the wait
    ends only once a connection is accepted."""
    import socket
    import threading

    with Journal(tmp_path / "journal.json", runner=runner) as journal:
        wg = WireGuard("hgunit-w0", journal=journal)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(wg.socket))  # exists, not listening yet: a connect is refused
        listening = threading.Event()

        def listen_later() -> None:
            time.sleep(0.3)
            server.listen(4)
            listening.set()

        thread = threading.Thread(target=listen_later)
        thread.start()
        try:
            wg._wait_for_socket(pid=1, start=1, log_path=tmp_path / "wg.log")
            assert listening.is_set(), "the wait ended while the socket still refused"
            assert wg.socket.exists(), "our readiness probe must not remove the socket"
        finally:
            thread.join()
            server.close()


def test_a_socket_that_never_listens_is_a_clear_error(
    tmp_path: Path, sock_dir: Path, runner: RecordingRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from higgs.osnet import wireguard

    monkeypatch.setattr(wireguard, "SOCKET_WAIT", 0.3)
    with Journal(tmp_path / "journal.json", runner=runner) as journal:
        wg = WireGuard("hgunit-w1", journal=journal)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
            bound.bind(str(wg.socket))
            with pytest.raises(WireGuardError, match="no control socket"):
                wg._wait_for_socket(pid=1, start=1, log_path=tmp_path / "wg.log")
