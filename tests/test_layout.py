"""The code's layout rules, checked on the source itself: every package imports only the packages below it
(the DAG's order, plumbing at the bottom, the CLI on top), and no function in the library or the stages
outgrows one screen."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The packages from the bottom up: the shared plumbing, then the DAG (data -> gan -> instrument), the tracked
# runs that train generators and judge them with the instrument, the reports on those runs, the grid that
# runs many of them, and the CLI on top. A package may import those before it, never those after it.
ORDER = ("pipeline.common", "pipeline.data", "pipeline.gan", "pipeline.instrument", "pipeline.runs",
         "pipeline.reports", "pipeline.grid", "pipeline.cli")
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


def upward_imports(folder: Path, higher: tuple[str, ...], root: Path = REPO) -> list[str]:
    offences = []
    for path in sorted(folder.rglob("*.py")):
        for line, module in imported_modules(ast.parse(path.read_text(), filename=str(path))):
            if any(module == above or module.startswith(above + ".") for above in higher):
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


def test_every_package_imports_only_the_packages_below_it():
    offences = []
    for i, package in enumerate(ORDER[:-1]):
        offences += upward_imports(REPO / package.replace(".", "/"), ORDER[i + 1:])
    assert offences == []


def test_every_library_package_has_its_place_in_the_order():
    packages = {f"pipeline.{p.name}" for p in (REPO / "pipeline").iterdir() if (p / "__init__.py").is_file()}
    assert packages <= set(ORDER), f"place {sorted(packages - set(ORDER))} in ORDER"


def test_no_function_in_pipeline_or_stages_is_longer_than_a_screen():
    assert long_functions([REPO / "pipeline", REPO / "stages"], MAX_FUNCTION_LINES) == []


def test_the_checks_catch_what_they_forbid(tmp_path):
    """Each check reports a planted offence, so an empty list above means the tree is clean."""
    (tmp_path / "bad.py").write_text(
        "from pipeline.instrument.evaluation import SCALARS\nfrom pipeline import gan\n\n"
        "def long():\n" + "    x = 1\n" * 80
    )
    assert upward_imports(tmp_path, ORDER[2:], root=tmp_path) == [  # as if the file were in pipeline/data
        "bad.py:1 imports pipeline.instrument.evaluation",
        "bad.py:1 imports pipeline.instrument.evaluation.SCALARS",
        "bad.py:2 imports pipeline.gan",
    ]
    assert long_functions([tmp_path], MAX_FUNCTION_LINES, root=tmp_path) == ["bad.py:4 long is 81 lines"]
