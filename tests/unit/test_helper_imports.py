"""Test helpers are imported one way: ``from support.<module> import ...`` (issue 10, item 7).

Every helper that more than one test module uses lives in ``tests/support/``; fixtures live in
``conftest.py`` files, which pytest loads and nothing imports. This scan parses every module
under ``tests/`` and ``benchmarks/`` and fails on the other styles: importing a conftest (by
name, relatively or by package path), ``tests.``-qualified imports inside the suite, a helper or
test module imported by its bare name from its own folder, a relative import, ``sys.path``
edits, and fixtures defined in support/ (they would have to be imported to be used).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
BENCHMARKS = ROOT / "benchmarks"


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if ".venv" not in p.parts)


def _local_names() -> set[str]:
    """Bare names that a module of tests/ could be imported by, bypassing ``support.``: its
    file's stem (helpers in support/ included), or its folder when that folder is a package."""
    names = {p.stem for p in _modules(TESTS)} - {"__init__"}
    names |= {p.parent.name for p in TESTS.glob("*/__init__.py") if p.parent.name != "support"}
    return names


def _imports(tree: ast.AST) -> list[tuple[int, int, str]]:
    """(line, relative level, dotted module) of every import of a module."""
    found: list[tuple[int, int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.level, node.module or ""))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, 0, alias.name) for alias in node.names]
    return found


def _edits_sys_path(tree: ast.AST) -> list[int]:
    """Lines calling ``sys.path.<anything>(...)`` (insert, append, extend...)."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == "path"
        and isinstance(node.func.value.value, ast.Name)
        and node.func.value.value.id == "sys"
    ]


def _fixtures(tree: ast.AST) -> list[int]:
    """Lines of functions decorated with ``pytest.fixture`` (called or not)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if isinstance(target, ast.Attribute) and target.attr == "fixture":
                    lines.append(node.lineno)
    return lines


def helper_import_problems(path: Path, local: set[str], source: str | None = None) -> list[str]:
    """What in ``path`` (or ``source``, read as if it were ``path``) breaks the one way of
    importing test helpers."""
    text = path.read_text() if source is None else source
    tree = ast.parse(text, filename=str(path))
    in_suite = TESTS in path.parents
    where = path.relative_to(ROOT)
    problems = []
    for line, level, module in _imports(tree):
        top = module.split(".")[0]
        if level:
            problems.append(f"{where}:{line}: relative import: use `from support.<module>`")
        elif top == "conftest" or module.endswith(".conftest"):
            problems.append(f"{where}:{line}: imports a conftest: move what it needs to support/")
        elif in_suite and top == "tests":
            problems.append(f"{where}:{line}: `{module}` inside tests/: use `support.<module>`")
        elif in_suite and top in local:
            problems.append(
                f"{where}:{line}: `{module}` by its bare name: import `support.<module>`"
            )
        elif not in_suite and (top in local or top == "support"):
            problems.append(f"{where}:{line}: `{module}` outside tests/: use `tests.support.<x>`")
    problems += [f"{where}:{line}: edits sys.path" for line in _edits_sys_path(tree)]
    if (TESTS / "support") in path.parents:
        problems += [
            f"{where}:{line}: a fixture in support/: define it in a conftest"
            for line in _fixtures(tree)
        ]
    return problems


def test_every_helper_is_imported_from_support_and_no_conftest_is_imported() -> None:
    local = _local_names()
    problems = [
        problem
        for path in _modules(TESTS) + _modules(BENCHMARKS)
        for problem in helper_import_problems(path, local)
    ]
    assert problems == [], "\n".join(problems)


def test_the_scan_refuses_each_other_style() -> None:
    """Each style this suite used before, planted in a module under tests/, is reported."""
    local = _local_names()
    styles = {
        "from conftest import Registered": "imports a conftest",
        "from .conftest import Trained": "relative import",
        "from tests.model.conftest import CITY": "imports a conftest",
        "from tests.support.live import ServerThread": "inside tests/",
        "from live import ServerThread": "by its bare name",
        "from model_factory import set_alias": "by its bare name",
        "from test_deployment import training_runs": "by its bare name",
        "from lake.conftest import new_bucket": "imports a conftest",
        "import sys\nsys.path.insert(0, 'tests/serving')": "edits sys.path",
    }
    planted = TESTS / "serving" / "test_planted.py"
    for source, expected in styles.items():
        problems = helper_import_problems(planted, local, source)
        assert any(expected in p for p in problems), (source, problems)
    for source in ("from support.live import ServerThread", "from serving.app import create_app"):
        assert helper_import_problems(planted, local, source) == [], source
    in_support = TESTS / "support" / "planted.py"
    fixture = "import pytest\n@pytest.fixture(scope='session')\ndef world(): ..."
    assert any(
        "a fixture in support/" in p for p in helper_import_problems(in_support, local, fixture)
    )
    bench = BENCHMARKS / "planted.py"
    assert helper_import_problems(bench, local, "from support.live import Load")
    assert helper_import_problems(bench, local, "from tests.support.live import Load") == []
