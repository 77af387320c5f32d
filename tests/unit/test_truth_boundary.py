"""Only the simulator and its diagnostics read the truth layer (issue 12).

A real dispatch system has no ``truth/``: production code that reads it works only inside the
simulator. This scan parses every module of ``src/``, ``serving/`` and ``dags/`` and fails when
one outside the allowed set calls the truth readers, imports the truth names or spells the
truth layer's name, or imports the simulator diagnostics without being one of their callers.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("src", "serving", "dags")

#: Names of the truth layer's readers and contract, wherever they are spelled.
TRUTH_NAMES = {
    "read_truth",
    "read_driver_truth",
    "TRUTH",
    "TRUTH_TABLES",
    "GROUND_TRUTH",
    "DRIVER_TRUTH",
}
#: A string that names the layer or its table (a path piece, not prose).
TRUTH_STRING = re.compile(r"^[\w./=-]*\b(truth|ground_truth)\b[\w./=-]*$")
DIAGNOSTICS = "matchmaking.evaluation.simulator"

#: The simulator writes truth; the diagnostics read it; the lake and the schema define it.
ALLOWED = (
    "src/matchmaking/world/",
    "src/matchmaking/evaluation/simulator.py",
    "src/matchmaking/lake/raw.py",
    "src/matchmaking/lake/__init__.py",
    "src/matchmaking/schema.py",
)
#: Who may call the diagnostics: evaluate (when the lake has truth). The promotion gate decides
#: on logged evidence (docs/promotion.md) and is no caller.
DIAGNOSTICS_CALLERS = ("src/matchmaking/evaluation/evaluate.py",)


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def truth_uses(source: str) -> list[str]:
    """What in ``source`` reads or names the truth layer (line: what)."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Name) and node.id in TRUTH_NAMES:
            found.append(f"{line}: name {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in TRUTH_NAMES:
            found.append(f"{line}: attribute .{node.attr}")
        elif isinstance(node, ast.ImportFrom):
            found += [f"{line}: imports {a.name}" for a in node.names if a.name in TRUTH_NAMES]
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docs
            and TRUTH_STRING.match(node.value)
        ):
            found.append(f"{line}: string {node.value!r}")
    return found


def imports_diagnostics(source: str) -> bool:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(a.name.startswith(DIAGNOSTICS) for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith(DIAGNOSTICS):
                return True
            if node.module == "matchmaking.evaluation" and any(
                a.name == "simulator" for a in node.names
            ):
                return True
    return False


def _modules() -> list[tuple[str, str]]:
    files = sorted(p for top in SCANNED for p in (ROOT / top).rglob("*.py"))
    assert len(files) > 50, "the scan found too few modules: wrong root?"
    return [(p.relative_to(ROOT).as_posix(), p.read_text()) for p in files]


@pytest.mark.parametrize(
    "snippet",
    [
        "from matchmaking import lake\nlake.read_truth(root, city, a, b)",
        "from matchmaking.lake.raw import read_driver_truth",
        "from matchmaking import lake\nlake.list_dates(root, city, layer=lake.TRUTH)",
        "days = list_dates(root, city, layer='truth')",
        "path = root / 'truth/city=jakarta'",
        "read_partitions(root, city, 'ground_truth', a, b)",
    ],
)
def test_the_scan_catches_every_way_of_reading_truth(snippet: str) -> None:
    assert truth_uses(snippet)


def test_the_scan_leaves_prose_about_the_truth_alone() -> None:
    assert not truth_uses('"""Reads the ground truth."""\nx = "the truth, as logged"')


def test_nothing_outside_the_simulator_and_its_diagnostics_reads_truth() -> None:
    offenders = {
        path: uses
        for path, source in _modules()
        if not path.startswith(ALLOWED) and (uses := truth_uses(source))
    }
    assert not offenders, (
        "these modules read or name the simulator's truth layer; production code decides on "
        f"logged data (move it to {DIAGNOSTICS}): {offenders}"
    )


def test_only_evaluate_calls_the_simulator_diagnostics() -> None:
    callers = {path for path, source in _modules() if imports_diagnostics(source)}
    assert callers <= set(DIAGNOSTICS_CALLERS), callers - set(DIAGNOSTICS_CALLERS)
    assert "src/matchmaking/evaluation/evaluate.py" in callers


def test_the_diagnostics_are_the_reader_of_truth_in_evaluation() -> None:
    """The allowed modules really are the readers (the scan is not vacuous)."""
    simulator = (ROOT / "src/matchmaking/evaluation/simulator.py").read_text()
    assert any("read_truth" in use for use in truth_uses(simulator))


def _sim_metric_names(source: str) -> list[str]:
    """String pieces in ``source`` (plain or in an f-string) that name a ``sim.*`` metric."""
    return [
        f"{node.lineno}: {node.value!r}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("sim.")
    ]


def test_the_promotion_gate_names_no_simulator_metric() -> None:
    """The oracle never decides a promotion: no registry module reads a ``sim.*`` metric."""
    assert _sim_metric_names('x = metrics["sim.replay.model.acceptance"]')
    assert _sim_metric_names('x = f"sim.replay.{policy}.acceptance"')
    offenders = {
        path: names
        for path, source in _modules()
        if path.startswith("src/matchmaking/registry/") and (names := _sim_metric_names(source))
    }
    assert not offenders, offenders
