"""Airflow for the DAG tests: a tiny two-city world, a pipeline config, a metadata database.

``airflow_env`` (session) creates a fresh PostgreSQL database for Airflow's metadata, points
``AIRFLOW_HOME``, the DAGs folder and ``MATCHMAKING_PIPELINE_CONFIG`` at test locations and
migrates the schema, all before Airflow is first imported (it reads its configuration once, at
import). The database is dropped at the end of the session.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support.dagworld import (
    CITIES,
    DAGS_DIR,
    WORLD_DAYS,
    WORLD_START,
    AirflowEnv,
    create_database,
    drop_database,
    git_head,
    pipeline_config,
)


@pytest.fixture(scope="session")
def dag_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw data for two cities, 300 bookings a day, 2026-08-01..10; returns the lake dir."""
    from matchmaking.world.generate import generate_world

    lake = tmp_path_factory.mktemp("dag-world") / "data" / "lake"
    generate_world(CITIES, WORLD_START, WORLD_DAYS, 5, lake, 0.002, 300, progress=False)
    return lake


@pytest.fixture(scope="session")
def airflow_session(
    tmp_path_factory: pytest.TempPathFactory, dag_world: Path
) -> Iterator[AirflowEnv]:
    """Airflow configured for the tests (fresh PostgreSQL metadata database, migrated).

    Only ``AIRFLOW_*`` variables stay set for the session (Airflow reads them on every config
    lookup); the pipeline's ``MATCHMAKING_*`` ones are set per test by ``airflow_env``.
    """
    home = tmp_path_factory.mktemp("airflow-home")
    config = home / "pipeline.yaml"
    config.write_text(yaml.safe_dump(pipeline_config(dag_world)))
    name, url = create_database("af")
    prefix = f"dags-{secrets.token_hex(4)}"
    airflow_vars = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
    }
    pipeline_vars = {
        "MATCHMAKING_PIPELINE_CONFIG": str(config),
        "MATCHMAKING_MODEL_NAME_PREFIX": prefix,
        "MATCHMAKING_EXPERIMENT_PREFIX": prefix,
        # Pin the code version: engineers committing during the session must not make a rerun
        # look like new code (the train step reuses on data digest + commit + params).
        "MATCHMAKING_GIT_COMMIT": git_head(),
    }
    saved = {k: os.environ.get(k) for k in airflow_vars}
    os.environ.update(airflow_vars)
    try:
        from airflow.utils import db

        db.initdb()
        yield AirflowEnv(home, dag_world, config, url, prefix, pipeline_vars)
    finally:
        try:
            from airflow import settings

            settings.dispose_orm()
        finally:
            drop_database(name)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture
def airflow_env(airflow_session: AirflowEnv, monkeypatch: pytest.MonkeyPatch) -> AirflowEnv:
    """The session's Airflow, with this test's environment pointing at its pipeline config."""
    for key, value in airflow_session.pipeline_vars.items():
        monkeypatch.setenv(key, value)
    return airflow_session


@pytest.hookimpl(tryfirst=True)  # before -m deselects, as the root conftest's marking
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests on Airflow need PostgreSQL for its metadata: mark them ``integration``."""
    for item in items:
        if "airflow_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
