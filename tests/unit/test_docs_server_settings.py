"""docs/server-settings.md lists every bosonserver setting once, with its environment variable,
its default and its range as the code has them: a setting added, renamed or changed in
``ServerSettings`` fails this test until the operator's reference says so too."""

from __future__ import annotations

import re
from pathlib import Path

from annotated_types import Ge, Gt, Le, Lt
from pydantic.fields import FieldInfo

from higgs.server.config import ENV_PREFIX, ServerSettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "server-settings.md"
_ROW = re.compile(r"^\| `([a-z0-9_]+)` \| `([A-Z0-9_]+)` \| (.*?) \| (.*?) \| (.+) \|$")


def default_cell(field: FieldInfo) -> str:
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"


def bounds_cell(field: FieldInfo) -> str:
    parts = []
    for m in field.metadata:
        if isinstance(m, Ge):
            parts.append(f"≥ {m.ge}")
        elif isinstance(m, Gt):
            parts.append(f"> {m.gt}")
        elif isinstance(m, Le):
            parts.append(f"≤ {m.le}")
        elif isinstance(m, Lt):
            parts.append(f"< {m.lt}")
    return ", ".join(parts)


def _rows() -> dict[str, tuple[str, str, str, str]]:
    rows: dict[str, tuple[str, str, str, str]] = {}
    for line in DOC.read_text().splitlines():
        m = _ROW.match(line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} listed twice"
            rows[m.group(1)] = (m.group(2), m.group(3), m.group(4), m.group(5))
    return rows


def test_every_setting_is_documented_once_with_its_env_default_and_range() -> None:
    rows = _rows()
    fields = ServerSettings.model_fields
    assert sorted(rows) == sorted(fields), "docs/server-settings.md and ServerSettings differ"
    for name, field in fields.items():
        env, default, bounds, meaning = rows[name]
        assert env == f"{ENV_PREFIX}{name.upper()}", name
        assert default == default_cell(field), f"{name}: the doc says {default}"
        assert bounds == bounds_cell(field), f"{name}: the doc says {bounds!r}"
        assert len(meaning) > 10, f"{name}: say what it does"


def test_the_renderers_see_the_defaults_and_bounds() -> None:
    fields = ServerSettings.model_fields
    assert default_cell(fields["session_ttl_s"]) == "`600`"
    assert bounds_cell(fields["session_ttl_s"]) == "≥ 1, ≤ 86400"
    assert default_cell(fields["database"]) == "unset"
    assert default_cell(fields["punch_enabled"]) == "`true`"
