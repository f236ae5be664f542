"""The code's layout rules, checked on the source itself: the shared plumbing (pipeline/common) never imports
the packages built on it, and no function in the library or the stages outgrows one screen."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The packages above pipeline/common in the DAG (data -> gan -> instrument -> reports) and the CLI on top.
HIGHER = ("pipeline.data", "pipeline.gan", "pipeline.instrument", "pipeline.reports", "pipeline.cli")
MAX_FUNCTION_LINES = 80  # COMMON's standard: no library or stage function over ~80 lines


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Every module an import statement names (for `from pipeline import gan`, pipeline.gan), with its line."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def upward_imports(folder: Path, root: Path = REPO) -> list[str]:
    offences = []
    for path in sorted(folder.rglob("*.py")):
        for line, module in imported_modules(ast.parse(path.read_text(), filename=str(path))):
            if any(module == higher or module.startswith(higher + ".") for higher in HIGHER):
                offences.append(f"{path.relative_to(root)}:{line} imports {module}")
    return offences


def long_functions(folders: list[Path], limit: int, root: Path = REPO) -> list[str]:
    offences = []
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > limit:
                        offences.append(f"{path.relative_to(root)}:{node.lineno} {node.name} is {length} lines")
    return offences


def test_common_imports_no_higher_package():
    assert upward_imports(REPO / "pipeline" / "common") == []


def test_no_function_in_pipeline_or_stages_is_longer_than_a_screen():
    assert long_functions([REPO / "pipeline", REPO / "stages"], MAX_FUNCTION_LINES) == []


def test_the_checks_catch_what_they_forbid(tmp_path):
    """Each check reports a planted offence, so an empty list above means the tree is clean."""
    (tmp_path / "bad.py").write_text(
        "from pipeline.instrument.evaluation import SCALARS\nfrom pipeline import gan\n\n"
        "def long():\n" + "    x = 1\n" * 80
    )
    assert upward_imports(tmp_path, root=tmp_path) == [
        "bad.py:1 imports pipeline.instrument.evaluation",
        "bad.py:1 imports pipeline.instrument.evaluation.SCALARS",
        "bad.py:2 imports pipeline.gan",
    ]
    assert long_functions([tmp_path], MAX_FUNCTION_LINES, root=tmp_path) == ["bad.py:4 long is 81 lines"]
