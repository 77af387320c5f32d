"""Shared pieces of the DAG tests: the tiny world's dates, the pipeline config, databases."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from support.tracking_server import (
    DATABASE_PREFIX,
    admin_execute,
    drop_orphaned_databases,
    postgres_admin_url,
    probe_postgres,
)

REPO = Path(__file__).resolve().parents[2]
DAGS_DIR = REPO / "dags"
CITIES = ["jakarta", "bangkok"]
WORLD_START = date(2026, 8, 1)
WORLD_DAYS = 10
# The run of this logical date processes 2026-08-08..09 (train) and 2026-08-10 (holdout).
LOGICAL_DATE = datetime(2026, 8, 11, 2, 0, tzinfo=UTC)
# A fresh lake (``fresh_lake``) starts on this day: the history of the windows' days.
FRESH_FROM = date(2026, 8, 6)
WINDOW_DAYS = [f"2026-08-{d:02d}" for d in range(8, 11)]  # the feature days a run builds
# The summaries published before them (the last day's is published by its own process_day).
SUMMARY_DAYS = [f"2026-08-{d:02d}" for d in range(6, 10)]


def fresh_lake(world: Path, parent: Path) -> Path:
    """A lake under ``parent`` holding ``world``'s raw data from ``FRESH_FROM`` on, nothing
    processed: a short history keeps the per-day fan-out of the deployment tests small."""
    lake = parent / "data" / "lake"
    for city_dir in sorted((world / "raw").iterdir()):
        target = lake / "raw" / city_dir.name
        target.mkdir(parents=True)
        for entry in city_dir.iterdir():
            day = entry.name.removeprefix("date=")
            if entry.is_file():
                shutil.copy2(entry, target / entry.name)
            elif entry.name.startswith("date=") and date.fromisoformat(day) >= FRESH_FROM:
                shutil.copytree(entry, target / entry.name)
    return lake


def day_labels(cities: list[str], days: list[str]) -> set[str]:
    """The labels (rendered map indexes) of the (city, day) task instances."""
    return {f"{c} {d}" for c in cities for d in days}


# ``days_per_task`` covering a city's days: one ``process_day`` instance a city, which
# publishes every summary its days need itself (no ``summarise`` instance). The deployment
# tests that are not about one broken day use it: 2 per-day task instances for two cities
# instead of 14.
WHOLE_CITY_TASKS = {"days_per_task": len(SUMMARY_DAYS) + 2}


def chunk_labels(cities: list[str], days: list[str]) -> set[str]:
    """The labels of one several-day task instance per city over ``days``."""
    return {f"{c} {days[0]}..{days[-1]}" for c in cities}


@dataclass(frozen=True)
class AirflowEnv:
    home: Path
    lake: Path
    config: Path
    sql_alchemy_conn: str
    model_prefix: str
    pipeline_vars: dict[str, str]


def pipeline_config(lake: Path, **overrides: object) -> dict[str, object]:
    """A pipeline config for the tiny world: short windows, fast training, no retry delay."""
    config: dict[str, object] = {
        "cities": CITIES,
        "lake_uri": lake.as_uri(),
        "windows": {"train_days": 2, "holdout_days": 1, "lag_days": 1},
        "train_params": {"objectives": "binary", "num_boost_round": "20", "valid_days": "1"},
        "retries": 1,
        "retry_delay_minutes": 0,
    }
    config.update(overrides)
    return config


def create_database(suffix: str) -> tuple[str, str]:
    """A fresh PostgreSQL database; returns its name and SQLAlchemy URL (psycopg2 driver)."""
    admin = postgres_admin_url()
    problem = probe_postgres(admin)
    if problem is not None:
        pytest.fail(f"the DAG tests need PostgreSQL for Airflow's metadata: {problem}")
    drop_orphaned_databases(admin)
    name = f"{DATABASE_PREFIX}{os.getpid()}_{suffix}_{secrets.token_hex(4)}"
    admin_execute(admin, "CREATE DATABASE {}", name)
    parts = urlsplit(admin)
    return name, urlunsplit(parts._replace(scheme="postgresql+psycopg2", path=f"/{name}"))


def drop_database(name: str) -> None:
    admin_execute(postgres_admin_url(), "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


def git_head() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or "unknown"
