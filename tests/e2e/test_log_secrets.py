"""The log scan can fail: a token and a private key planted in a lab process's log are found.

The session-wide check (tests/e2e/conftest.py) relies on ``Lab.teardown`` scanning every log;
this test plants secrets once through a real process in the lab and checks the scan reports
them by file and line, and that a redacted token is not reported.
"""

from __future__ import annotations

import pytest

from higgs.common.keys import PrivateKey, write_secret_file
from higgs.common.secrets import new_token, redact
from higgs.lab import secretscan
from higgs.lab.lab import Lab

pytestmark = [pytest.mark.e2e, pytest.mark.root]


def test_planted_secrets_are_found_and_redacted_ones_are_not(lab: Lab) -> None:
    assert lab.workdir is not None
    key = PrivateKey.generate()
    key_text = key.b64()
    write_secret_file(lab.workdir / "planted" / "private.key", key_text + "\n")
    token = new_token("hgn_")
    script = f"echo 'starting'; echo 'key {key_text}'; echo 'got {token}'; echo '{redact(token)}'"
    proc = lab.spawn(lab.node, ["sh", "-c", script], name="planter")
    proc.popen.wait(timeout=10)

    found = secretscan.scan(lab.workdir)
    del secretscan.FINDINGS[-len(found) :]  # planted on purpose: not a leak of the session
    log = proc.log.name
    assert {(f.path, f.line, f.kind) for f in found} == {
        (log, 2, "private key"),
        (log, 3, "token"),
    }
    assert key_text not in "".join(str(f) for f in found)
    # Remove the planted evidence so that the teardown scan of this lab stays clean.
    proc.log.unlink()
