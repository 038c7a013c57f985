"""The layout rules of the code itself: size budgets and which package may import what.

Budgets (shared/STYLE.md): no file over 500 lines, no function body over 60 lines (docstring not
counted). Layers follow the data path: ``partitioner`` uses only ``dmt``'s public API (``dmt`` and
``dmt.data``); ``dmt`` and ``towers`` never import scikit-learn or networkx, so training hosts need
neither.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dmt", "partitioner", "towers", "tests", "benchmarks", "examples")
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60
PARTITIONER_MAY_IMPORT = {"dmt", "dmt.data"}


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end of the function."""
    body = fn.body
    has_docstring = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    first = body[1] if has_docstring and len(body) > 1 else body[0]
    return fn.end_lineno - first.lineno + 1


def _imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_file_over_the_line_budget():
    long = {str(p.relative_to(REPO)): n for p in _sources() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, f"files over {MAX_FILE_LINES} lines (split them by concern): {long}"


def test_no_function_over_the_line_budget():
    long = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _body_lines(node) > MAX_FUNCTION_LINES:
                long[f"{path.relative_to(REPO)}:{node.lineno} {node.name}"] = _body_lines(node)
    assert not long, f"function bodies over {MAX_FUNCTION_LINES} lines (name the steps): {long}"


@pytest.mark.parametrize("package", ["dmt", "towers"])
def test_training_side_needs_no_partitioning_libraries(package):
    offenders = {
        str(p.relative_to(REPO)): sorted(
            m for m in _imported_modules(ast.parse(p.read_text())) if m.split(".")[0] in {"sklearn", "networkx"}
        )
        for p in (REPO / package).rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_partitioner_uses_only_the_public_dmt_api():
    private = {}
    for path in (REPO / "partitioner").rglob("*.py"):
        used = {m for m in _imported_modules(ast.parse(path.read_text())) if m.split(".")[0] == "dmt"}
        if used - PARTITIONER_MAY_IMPORT:
            private[str(path.relative_to(REPO))] = sorted(used - PARTITIONER_MAY_IMPORT)
    assert not private, f"partitioner imports dmt internals (export them from dmt or dmt.data): {private}"
