"""The platform stands apart from its simulator: only the simulator and the entry points that
start it import ``matchmaking.world``; every other layer reads the lake and the market catalogue.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "src" / "matchmaking"
SIMULATOR = "matchmaking.world"
# The commands that start the simulator (`matchmaking world ...`, `matchmaking demo`).
ENTRY_POINTS = {PACKAGE / "cli.py", PACKAGE / "demo.py"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def simulator_imports(path: Path) -> list[str]:
    return sorted(
        m for m in imported_modules(path) if m == SIMULATOR or m.startswith(f"{SIMULATOR}.")
    )


def test_nothing_outside_the_simulator_imports_it() -> None:
    files = [
        p
        for p in [*PACKAGE.rglob("*.py"), *(REPO / "serving").rglob("*.py")]
        if (PACKAGE / "world") not in p.parents and p not in ENTRY_POINTS
    ]
    assert len(files) > 40, "the scan found too few modules to mean anything"
    offenders = {str(p.relative_to(REPO)): simulator_imports(p) for p in files}
    assert {p: m for p, m in offenders.items() if m} == {}


def test_the_scan_sees_every_import_form(tmp_path: Path) -> None:
    """The check above would pass on a broken parser: prove it catches each spelling."""
    for line in (
        "import matchmaking.world.generate",
        "from matchmaking.world import lake",
        "from matchmaking import world",
        "def f():\n    from matchmaking.world.generate import generate_world",
    ):
        probe = tmp_path / "probe.py"
        probe.write_text(line + "\n")
        assert simulator_imports(probe), line
    (tmp_path / "ok.py").write_text("from matchmaking import lake\nimport matchmaking.markets\n")
    assert simulator_imports(tmp_path / "ok.py") == []


def test_the_entry_points_do_start_the_simulator() -> None:
    """The exemption is for files that need it; an exemption nobody uses should go."""
    for path in ENTRY_POINTS:
        assert simulator_imports(path), f"{path} no longer imports the simulator"
