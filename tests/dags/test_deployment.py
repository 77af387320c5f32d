"""A real Airflow: trigger matchmaking_data through the REST API, see both DAGs succeed.

API server, scheduler and DAG processor run as processes with LocalExecutor on a fresh
PostgreSQL metadata database; the tasks log to the real PostgreSQL-backed tracking server. Each
city's features event (the city is its partition key) must trigger a training run for that
city alone, which must register its version; a city whose processing fails must hold back no
other city's training.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from support.dagworld import CITIES, LOGICAL_DATE, AirflowEnv, pipeline_config
from support.deployment import (
    RUN_TIMEOUT_S,
    pipeline_deployment,
    registered_versions,
    training_runs,
)
from support.tracking_server import TrackingServer


@pytest.mark.slow
def test_a_run_triggered_through_the_rest_api_succeeds_and_triggers_training(
    airflow_env: AirflowEnv, tracking_server: TrackingServer, tmp_path: Path
) -> None:
    started = time.monotonic()
    with pipeline_deployment(tmp_path, pipeline_config(airflow_env.lake), tracking_server.uri) as (
        airflow,
        prefix,
    ):
        run_id = airflow.trigger("matchmaking_data", LOGICAL_DATE.isoformat())
        data = airflow.wait_for_run("matchmaking_data", run_id, RUN_TIMEOUT_S)
        assert data["state"] == "success", airflow.logs("scheduler")
        for city, trained in training_runs(airflow, CITIES).items():
            assert trained["state"] == "success", (city, airflow.logs("scheduler"))
            tis = airflow.task_instances("matchmaking_train", trained["dag_run_id"])
            # The city's run plans, trains and evaluates that city only; its country-model
            # branch plans no country (Jakarta and Bangkok are alone in theirs) and is skipped.
            assert sorted((t["task_id"], t["map_index"]) for t in tis) == [
                ("evaluate", 0),
                ("plan", -1),
                ("plan_countries", -1),
                ("train", 0),
                ("train_country", -1),
            ]
            assert {t["state"] for t in tis if t["task_id"] == "train_country"} == {"skipped"}
            assert {t["rendered_map_index"] for t in tis if t["task_id"] == "train"} == {city}
    for city in CITIES:
        assert registered_versions(tracking_server.uri, prefix, city) == ["1"]
    print(f"deployment test: {time.monotonic() - started:.0f} s")


@pytest.mark.slow
def test_a_city_whose_processing_fails_holds_back_no_other_citys_training(
    airflow_env: AirflowEnv, tracking_server: TrackingServer, tmp_path: Path
) -> None:
    # A copy of the tiny world in which one of Bangkok's raw partitions is not parquet.
    lake = tmp_path / "data" / "lake"
    shutil.copytree(airflow_env.lake, lake)
    broken = lake / "raw" / "city=bangkok" / "date=2026-08-06" / "bookings.parquet"
    assert broken.exists()
    broken.write_bytes(b"not parquet: a truncated upload")
    with pipeline_deployment(tmp_path, pipeline_config(lake), tracking_server.uri) as (
        airflow,
        prefix,
    ):
        run_id = airflow.trigger("matchmaking_data", LOGICAL_DATE.isoformat())
        data = airflow.wait_for_run("matchmaking_data", run_id, RUN_TIMEOUT_S)
        assert data["state"] == "failed"
        # The city group is mapped over CITIES: map index 0 is Jakarta, 1 Bangkok.
        tis = {
            (t["task_id"], CITIES[t["map_index"]]): t
            for t in airflow.task_instances("matchmaking_data", run_id)
        }
        # Bangkok failed after its retry; Jakarta processed and published all the same.
        assert tis[("process", "bangkok")]["state"] == "failed"
        assert tis[("process", "bangkok")]["try_number"] == 2
        assert tis[("publish", "bangkok")]["state"] == "upstream_failed"
        assert tis[("process", "jakarta")]["state"] == "success"
        assert tis[("publish", "jakarta")]["state"] == "success"
        trained = training_runs(airflow, ["jakarta"])["jakarta"]
        assert trained["state"] == "success", airflow.logs("scheduler")
        # Nothing more comes: no training run for Bangkok, none waiting for it.
        time.sleep(10)
        runs = airflow.request("GET", "/api/v2/dags/matchmaking_train/dagRuns")["dag_runs"]
        assert [r["partition_key"] for r in runs] == ["jakarta"]
    assert registered_versions(tracking_server.uri, prefix, "jakarta") == ["1"]
    assert registered_versions(tracking_server.uri, prefix, "bangkok") == []
