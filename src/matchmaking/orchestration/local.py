"""Run one day of the pipeline through Airflow in this process (``dag.test()``), no services.

What ``make demo`` uses: an ``AIRFLOW_HOME`` with a SQLite metadata database, the DAGs of
``dags/``, the data DAG for the day, then the training DAG on the asset event it published.
Airflow reads its configuration once, at import: ``configure_airflow`` must run first.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from matchmaking.errors import ConfigError, MatchmakingError
from matchmaking.orchestration.config import CONFIG_ENV_VAR, FEATURES_ASSET_NAME

logger = logging.getLogger(__name__)

DAGS_DIR = Path(__file__).resolve().parents[3] / "dags"
DATA_DAG = "matchmaking_data"
TRAIN_DAG = "matchmaking_train"


@dataclass(frozen=True)
class DayOutcome:
    """States of the two DAG runs, the features event and each city's evaluated result."""

    data_state: str
    train_state: str
    event: dict[str, Any]
    evaluated: list[dict[str, Any]]


def configure_airflow(home: Path, config: Path, log_level: str = "WARNING") -> None:
    """Point Airflow at ``home`` (SQLite metadata) and the pipeline at ``config``.

    Raises:
        ConfigError: Airflow was already imported with another home.
    """
    home = home.resolve()
    if "airflow" in sys.modules and os.environ.get("AIRFLOW_HOME") != str(home):
        raise ConfigError("Airflow was imported before configure_airflow(); call it first")
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": log_level,
            CONFIG_ENV_VAR: str(config.resolve()),
        }
    )


def run_day(day: date) -> DayOutcome:
    """``dag.test()`` the data DAG for ``day`` (02:00 UTC), then the training DAG.

    Raises:
        MatchmakingError: a DAG file does not import, or a run did not succeed.
    """
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    db.initdb()
    bag = DagBag(dag_folder=str(DAGS_DIR))
    if bag.import_errors:
        raise MatchmakingError(f"DAG files failed to import: {bag.import_errors}")
    logical = datetime.combine(day, time(2), tzinfo=UTC)
    data_run = bag.dags[DATA_DAG].test(logical_date=logical)
    if str(data_run.state) != "success":
        raise MatchmakingError(f"{DATA_DAG} {data_run.run_id} ended {data_run.state}")
    event = features_events(data_run.run_id)
    train_run = bag.dags[TRAIN_DAG].test(logical_date=None)
    evaluated = task_results(TRAIN_DAG, train_run.run_id, "evaluate")
    if str(train_run.state) != "success":
        raise MatchmakingError(f"{TRAIN_DAG} {train_run.run_id} ended {train_run.state}")
    return DayOutcome(str(data_run.state), str(train_run.state), event, evaluated)


def features_events(data_run_id: str) -> dict[str, Any]:
    """The ``matchmaking_features`` events a data run published (one per city), together.

    Returns:
        ``features_event``'s view: ``{"day": ..., "cities": {city: extra}}``.
    """
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from matchmaking.orchestration.tasks import features_event, latest_per_city

    with create_session() as session:
        extras = [
            dict(event.extra)
            for event in session.scalars(
                select(AssetEvent)
                .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                .where(AssetModel.name == FEATURES_ASSET_NAME)
                .where(AssetEvent.source_dag_id == DATA_DAG)
                .where(AssetEvent.source_run_id == data_run_id)
                .order_by(AssetEvent.id)
            )
        ]
    cities = latest_per_city(extras)
    day = date.fromisoformat(cities[0]["day"]) if cities else date.min
    return features_event(day, cities)


def task_results(dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
    """The return values (XCom) of a task's instances in a run, by map index."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(XComModel)
            .where(XComModel.dag_id == dag_id, XComModel.run_id == run_id)
            .where(XComModel.task_id == task_id, XComModel.key == "return_value")
            .order_by(XComModel.map_index)
        ).all()
        return [XComModel.deserialize_value(row) for row in rows]
