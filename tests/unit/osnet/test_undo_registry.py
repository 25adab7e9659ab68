"""One registry lists every undo operation, so any process can undo any journal entry."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from typing import Any

import pytest

import higgs.osnet
from higgs.osnet import undo, undo_registry


def _ops_defined_anywhere() -> dict[str, undo.UndoOp[Any]]:
    """Every UndoOp bound at module level in any higgs.osnet module, by 'module.NAME'."""
    found: dict[str, undo.UndoOp[Any]] = {}
    for info in pkgutil.walk_packages(higgs.osnet.__path__, "higgs.osnet."):
        module = importlib.import_module(info.name)
        for attr, value in vars(module).items():
            if isinstance(value, undo.UndoOp):
                found[f"{info.name}.{attr}"] = value
    return found


def test_every_undo_op_defined_in_osnet_is_in_the_registry() -> None:
    defined = _ops_defined_anywhere()
    assert defined, "the walk found no undo operation at all"
    missing = sorted(where for where, op in defined.items() if op not in undo_registry.ALL)
    assert missing == [], f"add these to higgs.osnet.undo_registry.ALL: {missing}"


def test_operation_names_are_unique_and_looked_up_by_name() -> None:
    names = [op.name for op in undo_registry.ALL]
    assert len(names) == len(set(names))
    assert {name: undo_registry.OPS[name] for name in names} == dict(undo_registry.OPS)


def test_a_fresh_process_that_opens_a_journal_knows_every_operation() -> None:
    # What `higgsnode cleanup` after a crash imports: the journal, nothing that made a change.
    probe = (
        "import json, sys\n"
        "import higgs.osnet.journal\n"
        "from higgs.osnet import undo_registry\n"
        "print(json.dumps(sorted(undo_registry.OPS)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    defined = {op.name for op in _ops_defined_anywhere().values()}
    assert set(json.loads(out.stdout)) == defined


def test_records_carry_their_operation_name() -> None:
    assert undo.argv(["true"]) == {"op": "argv", "argv": ["true"]}
    assert undo.interface_delete("hg0") == {"op": "link_delete", "name": "hg0", "netns": None}


def test_every_operation_has_a_dataclass_of_parameters() -> None:
    import dataclasses

    for op in undo_registry.ALL:
        assert dataclasses.is_dataclass(op.params), op.name
        assert op.params.__dataclass_params__.frozen, op.name  # type: ignore[attr-defined]


def test_a_record_is_built_from_its_parameters_only() -> None:
    with pytest.raises(TypeError, match="takes InterfaceDelete"):
        undo.INTERFACE_DELETE.record(undo.Argv(["true"]))  # type: ignore[arg-type]
