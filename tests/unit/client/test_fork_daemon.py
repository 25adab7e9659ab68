"""connect's fork of the daemon: the child's one JSON line comes back, its other output goes
to the log, and a child that dies without answering is reported (and reaped)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from higgs.client.process import ProcessError, fork_daemon


def test_the_childs_answer_comes_back_and_its_stderr_goes_to_the_log(tmp_path: Path) -> None:
    log = tmp_path / "state" / "daemon.log"

    def body() -> int:
        print("to the log", file=sys.stderr)
        print(json.dumps({"ok": True, "pid": os.getpid(), "session": os.getsid(0)}), flush=True)
        return 0

    answer = fork_daemon(body, log_file=log, timeout=30)
    assert answer["ok"] is True
    assert answer["pid"] != os.getpid()
    assert answer["session"] == answer["pid"]  # a session of its own: outlives the terminal
    os.waitpid(answer["pid"], 0)
    assert "to the log" in log.read_text()


def test_a_child_that_exits_without_an_answer_is_reported(tmp_path: Path) -> None:
    def body() -> int:
        return 3

    with pytest.raises(ProcessError, match=r"exited \(code 3\) without an answer"):
        fork_daemon(body, log_file=tmp_path / "daemon.log", timeout=30)


def test_a_failed_answer_is_returned_and_the_child_reaped(tmp_path: Path) -> None:
    def body() -> int:
        print(json.dumps({"ok": False, "error": "no route"}), flush=True)
        return 1

    answer = fork_daemon(body, log_file=tmp_path / "daemon.log", timeout=30)
    assert answer == {"ok": False, "error": "no route"}
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # nothing left to reap
