"""The real CLI's failures: one `error: ...` style for every command, the documented exit code.

Each command runs as a subprocess (`python -m matchmaking.cli`), so what is checked is what a
user sees on stderr, not what a test runner catches.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RICH_BOX = ("╭", "╰", "│")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "matchmaking.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def error_lines(stderr: str) -> list[str]:
    """The lines the CLI printed as errors; fails when anything looks like a traceback/box."""
    assert "Traceback" not in stderr, stderr
    assert not any(mark in stderr for mark in RICH_BOX), stderr
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_bad_training_overrides_are_one_line_per_field(tmp_path: Path) -> None:
    res = cli(
        *("train", "--city", "jakarta", "--features", str(tmp_path / "none")),
        *("--set", "learning_rate=abc", "--set", "bogus=1", "--set", "num_boost_round=-5"),
    )
    assert res.returncode == 2, res.stderr
    lines = error_lines(res.stderr)
    assert len(lines) == 3, res.stderr
    by_key = {line.split("=", 1)[0].removeprefix("error: --set "): line for line in lines}
    assert set(by_key) == {"learning_rate", "bogus", "num_boost_round"}
    assert "learning_rate=abc" in by_key["learning_rate"]
    assert "number" in by_key["learning_rate"]
    assert "unknown parameter" in by_key["bogus"] and "num_leaves" in by_key["bogus"]
    assert "greater than or equal to 1" in by_key["num_boost_round"]
    assert "pydantic" not in res.stderr and "http" not in res.stderr
    assert "train.yaml" not in res.stderr  # the overrides are wrong, not the file


def test_pipeline_refuses_a_bad_override_before_any_step(tmp_path: Path) -> None:
    res = cli("pipeline", "--city", "jakarta", "--end", "2026-10-02", "--set", "num_leaves=1")
    assert res.returncode == 2, res.stderr
    assert error_lines(res.stderr) == [
        "error: --set num_leaves=1: must be greater than or equal to 2"
    ]
    assert not (tmp_path / "data").exists()  # nothing ran, nothing was written


def test_bad_params_file_is_one_line_per_field(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("learning_rate: 2\nnum_leavs: 5\n")
    res = cli("train", "--city", "jakarta", "--features", str(tmp_path), "--params", str(params))
    assert res.returncode == 2, res.stderr
    lines = error_lines(res.stderr)
    assert len(lines) == 2, res.stderr
    assert all(str(params) in line for line in lines)
    assert any("learning_rate: must be less than or equal to 1" in line for line in lines)
    assert any("num_leavs: unknown parameter" in line for line in lines)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["process", "--city", "jakarta", "--start", "2026-02-30", "--end", "2026-03-01"],
            "2026-02-30",
        ),
        (["process", "--city", "jakarta", "--end", "2026-03-01"], "Missing option '--start'"),
        (["world", "generate", "--start", "2026-02-30"], "2026-02-30"),
        (["world", "generate", "--days", "0"], "'--days'"),
        (["train", "--city", "jakarta"], "Missing option '--features'"),
        (["no-such-command"], "No such command"),
    ],
)
def test_usage_errors_read_like_every_other_error(args: list[str], expected: str) -> None:
    res = cli(*args)
    assert res.returncode == 2, res.stderr
    lines = error_lines(res.stderr)
    assert len(lines) == 1 and expected in lines[0], res.stderr
    assert res.stderr.strip() == lines[0]  # no usage banner, nothing else around it


def test_bad_setting_in_the_environment_exits_2_naming_the_variable() -> None:
    res = cli("world", "cities", env={"MATCHMAKING_TRACKING_RETRIES": "many"})
    assert res.returncode == 2, res.stderr
    lines = error_lines(res.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: MATCHMAKING_TRACKING_RETRIES:")


def test_help_still_works() -> None:
    res = cli("--help")
    assert res.returncode == 0 and "process" in res.stdout
    res = cli("train", "--help")
    assert res.returncode == 0 and "--set" in res.stdout


def test_a_failed_pipeline_step_ends_in_one_line_not_a_traceback(tmp_path: Path) -> None:
    venv_bin = str(Path(sys.executable).parent)  # the steps call `matchmaking`
    res = cli(
        *("pipeline", "--city", "jakarta", "--end", "2026-10-02"),
        env={
            "MATCHMAKING_DATA_DIR": str(tmp_path / "empty"),
            "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        },
    )
    assert res.returncode != 0, res.stderr
    lines = error_lines(res.stderr)
    assert lines and "printed above" in lines[-1], res.stderr
    assert len(lines) == 2, res.stderr  # the step's own error, then the chain's
    assert res.stderr.rstrip().endswith(lines[-1])
