"""The real CLI: `matchmaking report` on an empty local store, and its bad-input exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each case starts the CLI (imports MLflow) in a subprocess


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MATCHMAKING_DATA_DIR": str(tmp_path / "data")}
    env.pop("MLFLOW_TRACKING_URI", None)  # the local SQLite store under the data dir
    return subprocess.run(
        [sys.executable, "-m", "matchmaking.cli", "report", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
        cwd=tmp_path,
    )


def test_an_empty_fleet_still_gives_a_report_and_a_run(tmp_path: Path) -> None:
    res = _run(tmp_path, "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    page = tmp_path / "out" / "index.html"
    assert f"report: {page}" in res.stdout
    assert "cities: 0" in res.stdout and "run_id: " in res.stdout
    assert "decision log" in page.read_text()  # says what does not exist yet


def test_bad_since_and_unknown_city_exit_2(tmp_path: Path) -> None:
    res = _run(tmp_path, "--since", "2026-13-01")
    assert res.returncode == 2 and "YYYY-MM-DD" in res.stderr
    res = _run(tmp_path, "--cities", "jakrta")
    assert res.returncode == 2 and "jakrta" in res.stderr
    assert not (tmp_path / "data" / "report").exists()


def test_an_invalid_drift_config_exits_2_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "drift.yaml"
    bad.write_text("alert_psi: -1\n")
    res = _run(tmp_path, "--drift-config", str(bad))
    assert res.returncode == 2 and str(bad) in res.stderr
