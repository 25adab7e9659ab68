"""The journal's crash points, ordering and tolerance, with a fake funnel or real files."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from higgs.osnet import procs, sysctl, undo, undo_registry
from higgs.osnet.errors import JournalError, UndoError
from higgs.osnet.journal import Journal
from higgs.osnet.runner import RecordingRunner, SubprocessRunner

NOT_FOUND = "RTNETLINK answers: No such file or directory"


@pytest.fixture
def runner() -> RecordingRunner:
    return RecordingRunner()


@pytest.fixture
def journal(tmp_path: Path, runner: RecordingRunner) -> Iterator[Journal]:
    with Journal(tmp_path / "state" / "journal.json", runner=runner) as j:
        yield j


def on_disk(path: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(path.read_text())["entries"]
    return entries


def test_entry_is_on_disk_before_the_change_is_made(journal: Journal) -> None:
    seen: list[list[dict[str, Any]]] = []
    journal.step("add x", undo.argv(["del", "x"]), lambda: seen.append(on_disk(journal.path)))
    assert [e["what"] for e in seen[0]] == ["add x"]
    assert seen[0][0]["undo"] == {"op": "argv", "argv": ["del", "x"]}
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o600


def test_undo_all_runs_in_reverse_order_and_empties_the_journal(
    journal: Journal, runner: RecordingRunner
) -> None:
    for name in ("a", "b", "c"):
        journal.record(f"add {name}", undo.argv(["del", name]))
    assert journal.undo_all() == 3
    assert runner.commands == [["del", "c"], ["del", "b"], ["del", "a"]]
    assert len(journal) == 0
    assert on_disk(journal.path) == []


def test_every_undo_runs_and_all_failures_are_reported_together(
    journal: Journal, runner: RecordingRunner
) -> None:
    for name in ("a", "b", "c", "d"):
        journal.record(f"add {name}", undo.argv(["del", name]))
    runner.script(["del", "b"], returncode=2, stderr="Operation not permitted")
    runner.script(["del", "d"], returncode=1, stderr="busy")
    runner.script(["del", "c"], returncode=1, stderr=NOT_FOUND)  # already gone: success
    with pytest.raises(UndoError) as info:
        journal.undo_all()
    assert runner.commands == [["del", "d"], ["del", "c"], ["del", "b"], ["del", "a"]]
    assert [f.what for f in info.value.failures] == ["add d", "add b"]
    assert "Operation not permitted" in str(info.value)
    # The failed ones stay for a later cleanup; the rest are gone, on disk too.
    assert [e["what"] for e in on_disk(journal.path)] == ["add b", "add d"]


def test_crash_after_recording_before_applying_replays_as_success(
    tmp_path: Path, runner: RecordingRunner
) -> None:
    path = tmp_path / "journal.json"
    first = Journal(path, runner=runner)
    first.record("add link higgs0", undo.interface_delete("higgs0"))
    first.close()  # the process died before the change was made

    runner.script(["ip", "link", "delete"], returncode=1, stderr='Cannot find device "higgs0"')
    with Journal(path, runner=runner) as second:
        assert [e.what for e in second.entries] == ["add link higgs0"]
        assert second.replay() == 1
        assert len(second) == 0
    assert runner.commands == [["ip", "link", "delete", "dev", "higgs0"]]


class Crash(BaseException):
    """Stands for the process dying in the middle of an undo."""


def test_partial_undo_then_crash_resumes_where_it_stopped(
    tmp_path: Path, runner: RecordingRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal.json"
    first = Journal(path, runner=runner)
    for name in ("a", "b", "c"):
        first.record(f"add {name}", undo.argv(["del", name]))

    crash_at = {"del", "b"}

    def crashing_argv(params: undo.Argv, ctx: undo.UndoContext) -> None:
        if set(params.argv) == crash_at:
            raise Crash
        ctx.runner.run(params.argv)

    crashing = undo.UndoOp("argv", undo.Argv, crashing_argv)
    monkeypatch.setattr(undo_registry, "OPS", {**undo_registry.OPS, "argv": crashing})
    with pytest.raises(Crash):
        first.undo_all()
    first.close()
    assert [e["what"] for e in on_disk(path)] == ["add a", "add b"]

    monkeypatch.undo()
    with Journal(path, runner=runner) as second:
        second.replay()
    assert runner.commands == [["del", "c"], ["del", "b"], ["del", "a"]]
    assert on_disk(path) == []


def test_undone_but_not_yet_removed_is_undone_again_harmlessly(tmp_path: Path) -> None:
    made = tmp_path / "made"
    path = tmp_path / "journal.json"
    first = Journal(path, runner=SubprocessRunner())
    first.step("create file", undo.argv(["rm", str(made)]), made.touch)
    made.unlink()  # the undo ran, then the process died before removing the entry
    first.close()
    with Journal(path, runner=SubprocessRunner()) as second:
        assert second.replay() == 1  # rm: No such file or directory -> success
        assert len(second) == 0


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from higgs.osnet import undo
    from higgs.osnet.journal import Journal
    journal = Journal(Path(sys.argv[1]))
    for i in range(3):
        made = Path(sys.argv[2]) / f"made{i}"
        journal.step(f"create {made}", undo.argv(["rm", str(made)]), made.touch)
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_sigkilled_process_leaves_a_journal_the_next_start_replays(tmp_path: Path) -> None:
    path = tmp_path / "state" / "journal.json"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        # While it lives, nobody else may use its journal.
        with pytest.raises(JournalError, match=f"in use by process {child.pid}"):
            Journal(path)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert sorted(p.name for p in tmp_path.glob("made*")) == ["made0", "made1", "made2"]
    with Journal(path) as after:
        assert after.replay() == 3
    assert list(tmp_path.glob("made*")) == []


def test_failed_step_undoes_itself_and_transaction_rolls_back_the_rest(
    journal: Journal, runner: RecordingRunner
) -> None:
    journal.record("before", undo.argv(["del", "before"]))

    def boom() -> None:
        raise RuntimeError("apply failed")

    def setup() -> None:
        with journal.transaction("setup"):
            journal.step("one", undo.argv(["del", "one"]), lambda: None)
            journal.step("two", undo.argv(["del", "two"]), lambda: None)
            journal.step("three", undo.argv(["del", "three"]), boom)

    with pytest.raises(RuntimeError, match="apply failed"):
        setup()
    assert runner.commands == [["del", "three"], ["del", "two"], ["del", "one"]]
    assert [e.what for e in journal.entries] == ["before"]


def test_successful_transaction_keeps_its_changes(journal: Journal) -> None:
    with journal.transaction("setup"):
        journal.step("one", undo.argv(["del", "one"]), lambda: None)
    assert [e.what for e in journal.entries] == ["one"]


async def test_async_transaction_rolls_back_on_cancel(
    journal: Journal, runner: RecordingRunner
) -> None:
    async def connect() -> None:
        async with journal.atransaction("connect"):
            journal.step("one", undo.argv(["del", "one"]), lambda: None)
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await connect()
    assert runner.commands == [["del", "one"]]
    assert len(journal) == 0


def test_rollback_failure_is_attached_to_the_original_error(
    journal: Journal, runner: RecordingRunner
) -> None:
    runner.script(["del", "one"], returncode=1, stderr="Device or resource busy")

    def setup() -> None:
        with journal.transaction("setup"):
            journal.step("one", undo.argv(["del", "one"]), lambda: None)
            raise RuntimeError("later step failed")

    with pytest.raises(RuntimeError) as info:
        setup()
    assert any("Device or resource busy" in note for note in info.value.__notes__)
    assert [e.what for e in journal.entries] == ["one"]


def test_undo_one_entry(journal: Journal, runner: RecordingRunner) -> None:
    keep = journal.record("keep", undo.argv(["del", "keep"]))
    move = journal.record("route via eth0", undo.argv(["ip", "route", "del", "x"]))
    journal.undo(move)
    assert journal.entries == (keep,)
    assert runner.commands == [["ip", "route", "del", "x"]]


def test_unknown_op_in_the_file_is_reported_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    path.write_text(
        json.dumps(
            {
                "format": 1,
                "next_id": 3,
                "entries": [
                    {"id": 1, "what": "old", "undo": {"op": "argv", "argv": ["true"]}},
                    {"id": 2, "what": "future", "undo": {"op": "teleport"}},
                ],
            }
        )
    )
    with Journal(path, runner=RecordingRunner()) as journal:
        with pytest.raises(UndoError, match="unknown undo operation 'teleport'"):
            journal.replay()
        assert [e.what for e in journal.entries] == ["future"]
        # ids keep growing past what the file held
        assert journal.record("new", undo.argv(["true"])).id == 3


@pytest.mark.parametrize("content", ["{not json", '{"format": 99, "entries": []}', "[]"])
def test_damaged_journal_is_a_clear_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "journal.json"
    path.write_text(content)
    with pytest.raises(JournalError, match="damaged"):
        Journal(path)
    Journal(path.with_name("other.json")).close()  # the lock of the failed one was released


def test_record_refuses_undo_that_is_not_data(journal: Journal) -> None:
    with pytest.raises(ValueError, match="unknown undo operation"):
        journal.record("x", {"op": "nope"})
    with pytest.raises(ValueError, match="JSON"):
        journal.record("x", {"op": "argv", "argv": [object()]})
    assert len(journal) == 0


def test_sysctl_set_journals_the_previous_value_per_namespace(
    journal: Journal, runner: RecordingRunner
) -> None:
    runner.script(["ip", "netns", "exec", "ns1", "sysctl", "-n"], stdout="0\n")
    previous = sysctl.set(journal, "net.ipv4.ip_forward", "1", netns="ns1")
    assert previous == "0"
    journal.undo_all()
    assert runner.commands == [
        ["ip", "netns", "exec", "ns1", "sysctl", "-n", "net.ipv4.ip_forward"],
        ["ip", "netns", "exec", "ns1", "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
        ["ip", "netns", "exec", "ns1", "sysctl", "-q", "-w", "net.ipv4.ip_forward=0"],
    ]


def test_sysctl_already_right_is_not_journaled(journal: Journal, runner: RecordingRunner) -> None:
    runner.script(["ip", "netns", "exec", "ns1", "sysctl", "-n"], stdout="1\n")
    assert sysctl.set(journal, "net.ipv4.ip_forward", "1", netns="ns1") == "1"
    assert len(journal) == 0
    assert len(runner.calls) == 1


def test_file_restore_puts_back_or_removes(journal: Journal, tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.1\n")
    os.chmod(resolv, 0o644)
    journal.step(
        "replace resolv.conf",
        undo.file_restore(resolv, resolv.read_text(), 0o644),
        lambda: resolv.write_text("nameserver 10.8.0.1\n"),
    )
    created = tmp_path / "created"
    journal.step("create", undo.file_restore(created, None), created.touch)
    journal.undo_all()
    assert resolv.read_text() == "nameserver 192.0.2.1\n"
    assert stat.S_IMODE(resolv.stat().st_mode) == 0o644
    assert not created.exists()


def test_kill_pid_stops_our_process_and_spares_a_recycled_pid(
    journal: Journal, tmp_path: Path
) -> None:
    ours = subprocess.Popen(["sleep", "60"])
    other = subprocess.Popen(["sleep", "60"])
    try:
        start = procs.process_start_time(ours.pid)
        assert start is not None
        sock = tmp_path / "higgs0.sock"
        sock.touch()
        journal.record("wireguard-go", undo.kill_pid(ours.pid, start, sock))
        # The same PID with another start time is another process: it must survive.
        journal.record("stale", undo.kill_pid(other.pid, start - 1))
        journal.undo_all()
        assert procs.process_start_time(ours.pid) is None  # gone (and reaped)
        assert other.poll() is None
        assert not sock.exists()
    finally:
        for proc in (ours, other):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_changes_in_a_namespace_that_is_gone_count_as_undone(journal: Journal) -> None:
    from higgs.osnet.routes import Route, Rule, route_undo, rule_undo

    gone = "higgs-ns-that-was-deleted"
    journal.record("route", route_undo(Route("10.1.0.0/16", dev="x"), gone))
    journal.record("rule", rule_undo(Rule(5000, 254, 4, suppress_prefixlength=0), gone))
    assert journal.undo_all() == 2


# --- several threads writing one journal --------------------------------------------------


def test_threads_recording_and_forgetting_at_once_lose_nothing(tmp_path: Path) -> None:
    """The node's port mapper records from the event loop while host steps record from
    worker threads: every entry must reach the file, each with its own id."""
    import threading

    threads, per_thread = 4, 15
    start = threading.Barrier(threads)
    errors: list[BaseException] = []
    with Journal(tmp_path / "journal.json", runner=RecordingRunner()) as journal:

        def work(n: int) -> None:
            try:
                start.wait()
                for i in range(per_thread):
                    entry = journal.record(f"t{n} #{i}", undo.argv(["true", str(n), str(i)]))
                    if i % 5 == 4:
                        journal.forget(entry)
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)
        assert errors == []
        kept = {(f"t{n} #{i}") for n in range(threads) for i in range(per_thread) if i % 5 != 4}
        assert {e.what for e in journal.entries} == kept
        ids = [e.id for e in journal.entries]
        assert len(set(ids)) == len(ids)
    on_disk = json.loads((tmp_path / "journal.json").read_text())["entries"]
    assert {e["what"] for e in on_disk} == kept
    assert len({e["id"] for e in on_disk}) == len(on_disk)
    with Journal(tmp_path / "journal.json", runner=RecordingRunner()) as again:
        assert again.undo_all() == len(kept)


def test_transaction_leaves_what_another_thread_recorded_meanwhile(
    journal: Journal, runner: RecordingRunner
) -> None:
    inside = threading.Event()
    recorded = threading.Event()

    def port_mapper() -> None:
        inside.wait(5)
        journal.record("router mapping", undo.argv(["del", "mapping"]))
        recorded.set()

    other = threading.Thread(target=port_mapper)
    other.start()

    def setup() -> None:
        with journal.transaction("peer setup"):
            journal.step("peer", undo.argv(["del", "peer"]), lambda: None)
            inside.set()
            recorded.wait(5)
            raise RuntimeError("handshake failed")

    with pytest.raises(RuntimeError, match="handshake failed"):
        setup()
    other.join(5)
    assert runner.commands == [["del", "peer"]]
    assert [e.what for e in journal.entries] == ["router mapping"]


async def test_async_transaction_rolls_back_what_its_threads_recorded(
    journal: Journal, runner: RecordingRunner
) -> None:
    async def connect() -> None:
        async with journal.atransaction("connect"):
            await asyncio.to_thread(journal.step, "one", undo.argv(["del", "one"]), lambda: None)
            raise RuntimeError("later step failed")

    with pytest.raises(RuntimeError):
        await connect()
    assert runner.commands == [["del", "one"]]
    assert len(journal) == 0
