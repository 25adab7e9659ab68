"""Every credential comparison in the programs is constant time or a lookup by hash.

An AST scan of ``src/higgs``: a Python ``==``/``!=`` whose operand is named like a credential
(``token``, ``secret``, ``key_hash``, ``password``…) is a timing side channel waiting to
happen. SQLAlchemy column expressions (``Node.token_hash == …``, ``table.c.token_hash == …``)
are allowed: they become ``WHERE`` clauses on a SHA-256 digest, a lookup by hash.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import higgs

_SECRET = re.compile(r"token|secret|key_hash|password|psk|private", re.IGNORECASE)
_SRC = Path(higgs.__file__).parent


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_sql_column(node: ast.expr) -> bool:
    if not isinstance(node, ast.Attribute):
        return False
    owner = node.value
    if isinstance(owner, ast.Attribute) and owner.attr == "c":  # table.c.column
        return True
    return isinstance(owner, ast.Name) and owner.id[:1].isupper()  # Model.column


def _is_constant(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant)


def offending_comparisons(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, operands[:-1], operands[1:], strict=True):
            if not isinstance(op, ast.Eq | ast.NotEq):
                continue
            pair = (left, right)
            if any(_is_sql_column(x) or _is_constant(x) for x in pair):
                continue
            names = [n for n in map(_name, pair) if n and _SECRET.search(n)]
            if names:
                found.append((node.lineno, names[0]))
    return found


def test_scanner_finds_a_plain_token_comparison() -> None:
    assert offending_comparisons("ok = given_token == stored.token_hash\n") == [(1, "given_token")]
    assert offending_comparisons("ok = hmac.compare_digest(a_token, b_token)\n") == []
    assert offending_comparisons("q = Node.token_hash == digest\n") == []


def test_no_credential_is_compared_with_eq() -> None:
    problems = []
    for path in sorted(_SRC.rglob("*.py")):
        for line, name in offending_comparisons(path.read_text()):
            problems.append(f"{path.relative_to(_SRC)}:{line}: {name}")
    assert problems == [], "use higgs.common.secrets.tokens_equal or a lookup by hash"
