"""Faults in the raw data, through the real command line: a missing window, a truncated
partition file, a partition that lost a column. Each names the day or the file, exits with the
documented code and publishes nothing; the MLflow run ends FAILED, never left RUNNING."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest

from matchmaking.config import Settings
from matchmaking.world.generate import generate_world

FIRST = date(2026, 8, 1)  # the lake holds 2026-08-01..2026-08-03
DAY = date(2026, 8, 3)

pytestmark = pytest.mark.slow  # each test starts the CLI in a fresh interpreter (MLflow import)


@pytest.fixture
def settings() -> Settings:
    """The settings the CLI sees (``isolated_mlflow`` points the data dir and MLflow at
    ``tmp_path``), over a three-day Jakarta lake."""
    s = Settings()
    generate_world(
        cities=["jakarta"],
        start=FIRST,
        days=3,
        seed=3,
        out=s.lake_dir,
        scale=0.002,
        bookings_per_day=300,
        progress=False,
    )
    return s


def _process(start: date, end: date) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "matchmaking.cli", "process", "--city", "jakarta"),
            *("--start", start.isoformat(), "--end", end.isoformat()),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
        check=False,
    )


def _raw(settings: Settings, day: date, table: str) -> Path:
    return settings.raw_dir / "city=jakarta" / f"date={day}" / f"{table}.parquet"


def _assert_nothing_published(settings: Settings) -> None:
    written = list(settings.features_dir.rglob("*")) if settings.features_dir.exists() else []
    assert written == [], f"a failed step wrote {written}"
    runs = mlflow.search_runs(experiment_names=["matchmaking-jakarta"])
    assert list(runs["status"]) == ["FAILED"]


def _assert_no_traceback(res: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in res.stderr and "ArrowInvalid" not in res.stderr, res.stderr


def test_missing_window_says_history_is_needed_and_which_days(settings: Settings) -> None:
    res = _process(date(2027, 1, 1), date(2027, 1, 5))
    assert res.returncode == 3, res.stderr
    _assert_no_traceback(res)
    assert "28 days of history before it" in res.stderr
    assert "window days 2027-01-01..2027-01-05 (5 of 5)" in res.stderr
    assert "history days 2026-12-04..2026-12-31 (28 of 28)" in res.stderr
    assert "holds 2026-08-01..2026-08-03" in res.stderr
    assert "asked days" not in res.stderr  # the old "33 of 33 asked days"
    _assert_nothing_published(settings)


def test_truncated_partition_file_exits_4_naming_it(settings: Settings) -> None:
    path = _raw(settings, date(2026, 8, 2), "candidates")  # a history day of the window
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    res = _process(DAY, DAY)
    assert res.returncode == 4, res.stderr
    _assert_no_traceback(res)
    assert str(path) in res.stderr
    assert "truncated or corrupt" in res.stderr and "Rewrite" in res.stderr
    _assert_nothing_published(settings)


def test_partition_missing_a_column_exits_4_naming_file_and_column(settings: Settings) -> None:
    path = _raw(settings, DAY, "bookings")
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["pickup_lat"]), path)
    res = _process(DAY, DAY)
    assert res.returncode == 4, res.stderr
    _assert_no_traceback(res)
    assert f"{path}: column 'pickup_lat' is missing" in res.stderr
    assert "null_field" not in res.stderr  # not quarantined row by row
    _assert_nothing_published(settings)
