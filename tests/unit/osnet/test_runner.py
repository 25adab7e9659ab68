from __future__ import annotations

import logging

import pytest

from higgs.osnet.errors import CommandError, is_not_found
from higgs.osnet.runner import RecordingRunner, SubprocessRunner


def test_subprocess_runner_returns_output() -> None:
    result = SubprocessRunner().run(["sh", "-c", "echo out; echo err >&2"])
    assert result.ok
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.argv == ("sh", "-c", "echo out; echo err >&2")


def test_failure_raises_one_error_type_carrying_argv_code_and_stderr() -> None:
    with pytest.raises(CommandError) as info:
        SubprocessRunner().run(["sh", "-c", "echo 'Cannot find device \"x\"' >&2; exit 3"])
    err = info.value
    assert err.argv[:2] == ("sh", "-c")
    assert err.returncode == 3
    assert "Cannot find device" in err.stderr
    assert err.not_found
    assert "exited 3" in str(err)


def test_check_false_returns_the_failed_result() -> None:
    result = SubprocessRunner().run(["sh", "-c", "exit 4"], check=False)
    assert result.returncode == 4
    assert not result.ok


def test_missing_executable_and_timeout_are_command_errors() -> None:
    with pytest.raises(CommandError) as missing:
        SubprocessRunner().run(["higgs-no-such-tool-xyz"])
    assert missing.value.returncode is None
    with pytest.raises(CommandError) as slow:
        SubprocessRunner().run(["sleep", "5"], timeout=0.2)
    assert slow.value.returncode is None
    assert "timed out" in str(slow.value)


def test_input_is_passed_but_never_logged_and_tokens_are_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "cHJpdmF0ZS1rZXktbWF0ZXJpYWwtbm90LWZvci1sb2dz"
    token = "hgc_abcdefghijklmnop"
    with caplog.at_level(logging.DEBUG, logger="higgs.osnet.runner"):
        result = SubprocessRunner().run(["sh", "-c", "cat; true", token], input=secret)
    assert result.stdout == secret
    assert "run: sh -c 'cat; true' hgc_***" in caplog.text
    assert secret not in caplog.text
    assert token not in caplog.text


def test_error_message_redacts_tokens() -> None:
    with pytest.raises(CommandError) as info:
        SubprocessRunner().run(["sh", "-c", "exit 1", "hge_secretenrollkey"])
    assert "hge_secretenrollkey" not in str(info.value)


def test_netns_runner_prefixes_ip_netns_exec() -> None:
    runner = SubprocessRunner(netns="higgs-no-such-ns-xyz")
    with pytest.raises(CommandError) as info:
        runner.run(["true"])
    assert info.value.argv == ("ip", "netns", "exec", "higgs-no-such-ns-xyz", "true")


def test_recording_runner_records_and_scripts() -> None:
    runner = RecordingRunner()
    runner.script(["wg", "show"], stdout="dump\n")
    runner.script(["ip", "link", "delete"], returncode=1, stderr="Cannot find device", times=1)
    assert runner.run(["wg", "show", "x", "dump"]).stdout == "dump\n"
    with pytest.raises(CommandError):
        runner.run(["ip", "link", "delete", "dev", "x"])
    assert runner.run(["ip", "link", "delete", "dev", "x"]).ok  # the script was used up
    runner.run(["wg", "set", "x", "private-key", "/dev/stdin"], input="key")
    assert runner.commands == [
        ["wg", "show", "x", "dump"],
        ["ip", "link", "delete", "dev", "x"],
        ["ip", "link", "delete", "dev", "x"],
        ["wg", "set", "x", "private-key", "/dev/stdin"],
    ]
    assert runner.inputs[-1] == "key"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ('Cannot find device "higgs0"', True),
        ("RTNETLINK answers: No such file or directory", True),
        ("Error: Could not process rule: No such file or directory", True),
        ("iptables: Bad rule (does a matching rule exist in that chain?).", True),
        ("iptables: No chain/target/match by that name.", True),
        ("RTNETLINK answers: Operation not permitted", False),
        ("RTNETLINK answers: File exists", False),
    ],
)
def test_not_found_recognises_the_tools_messages(message: str, expected: bool) -> None:
    assert is_not_found(message) is expected
