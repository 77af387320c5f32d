"""A real Airflow: trigger matchmaking_data through the REST API, see both DAGs succeed.

API server, scheduler and DAG processor run as processes with LocalExecutor on a fresh
PostgreSQL metadata database; the tasks log to the real PostgreSQL-backed tracking server. The
data run's asset event must trigger matchmaking_train, which must register a version per city.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagworld import (
    CITIES,
    DAGS_DIR,
    LOGICAL_DATE,
    AirflowEnv,
    create_database,
    drop_database,
    pipeline_config,
)
from deployment import AirflowDeployment
from support.tracking_server import TrackingServer

RUN_TIMEOUT_S = 240.0


@pytest.mark.slow
def test_a_run_triggered_through_the_rest_api_succeeds_and_triggers_training(
    airflow_env: AirflowEnv, tracking_server: TrackingServer, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    config = tmp_path / "pipeline.yaml"
    # No cron: the only data run is the one triggered below (catchup is off anyway).
    config.write_text(yaml.safe_dump(pipeline_config(airflow_env.lake, schedule=None)))
    prefix = f"deploy-{secrets.token_hex(4)}"
    name, url = create_database("afdeploy")
    started = time.monotonic()
    try:
        extra_env = {
            "MLFLOW_TRACKING_URI": tracking_server.uri,
            "MATCHMAKING_PIPELINE_CONFIG": str(config),
            "MATCHMAKING_MODEL_NAME_PREFIX": prefix,
            "MATCHMAKING_EXPERIMENT_PREFIX": prefix,
        }
        with AirflowDeployment(tmp_path / "airflow", DAGS_DIR, url, extra_env) as airflow:
            airflow.login()
            airflow.wait_for(
                "the DAG processor to register both DAGs",
                lambda: all(
                    airflow.request("GET", f"/api/v2/dags/{d}")["is_paused"] is False
                    for d in ("matchmaking_data", "matchmaking_train")
                ),
                120,
            )
            run = airflow.request(
                "POST",
                "/api/v2/dags/matchmaking_data/dagRuns",
                {"logical_date": LOGICAL_DATE.isoformat()},
            )
            run_id = run["dag_run_id"]

            def data_state() -> str | None:
                state = airflow.request("GET", f"/api/v2/dags/matchmaking_data/dagRuns/{run_id}")
                return str(state["state"]) if state["state"] in ("success", "failed") else None

            assert airflow.wait_for("the data run", data_state, RUN_TIMEOUT_S) == "success"

            def train_run() -> dict[str, Any] | None:
                runs = airflow.request("GET", "/api/v2/dags/matchmaking_train/dagRuns")
                done = [r for r in runs["dag_runs"] if r["state"] in ("success", "failed")]
                return done[0] if done else None

            trained = airflow.wait_for("the asset-triggered training run", train_run, RUN_TIMEOUT_S)
            assert trained["state"] == "success", airflow.logs("scheduler")
            assert trained["run_type"] == "asset_triggered"
            tis = airflow.request(
                "GET",
                f"/api/v2/dags/matchmaking_train/dagRuns/{trained['dag_run_id']}/taskInstances",
            )["task_instances"]
            assert sorted((t["task_id"], t["map_index"]) for t in tis) == [
                ("evaluate", 0),
                ("evaluate", 1),
                ("plan", -1),
                ("train", 0),
                ("train", 1),
            ]
    finally:
        drop_database(name)
    client = MlflowClient(tracking_uri=tracking_server.uri, registry_uri=tracking_server.uri)
    for city in CITIES:
        versions = client.search_model_versions(f"name='{prefix}-{city}'")
        assert [mv.version for mv in versions] == ["1"]
    print(f"deployment test: {time.monotonic() - started:.0f} s")
