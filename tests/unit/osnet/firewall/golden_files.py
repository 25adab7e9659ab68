"""Compare rendered text with tests/unit/osnet/firewall/golden/; HIGGS_UPDATE_GOLDEN=1 rewrites."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["GOLDEN", "assert_golden"]

GOLDEN = Path(__file__).parent / "golden"


def assert_golden(filename: str, text: str) -> None:
    path = GOLDEN / filename
    if os.environ.get("HIGGS_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with HIGGS_UPDATE_GOLDEN=1 and review the diff"
    assert text == path.read_text(), f"{filename} differs from the golden file"
