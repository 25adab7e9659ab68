"""Errors of the lab."""

from __future__ import annotations

from collections.abc import Sequence

from higgs.common.errors import HiggsError
from higgs.common.secrets import redact

__all__ = ["CommandError", "LabError"]


class LabError(HiggsError):
    """Building, using or tearing down the lab failed.

    The message is scrubbed of credentials: it lands in test reports and CI logs, and a failed
    ``client add`` or an HTTP answer may carry a token (the raw output stays on the error)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(redact(message))


class CommandError(LabError):
    """A command run for the lab failed; carries the argv, exit code and output."""

    def __init__(self, argv: Sequence[str], returncode: int | None, output: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        what = "timed out" if returncode is None else f"exited {returncode}"
        tail = output.strip()[-2000:]
        super().__init__(f"`{' '.join(self.argv)}` {what}" + (f": {tail}" if tail else ""))
