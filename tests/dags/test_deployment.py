"""A real Airflow: trigger matchmaking_data through the REST API, see both DAGs succeed.

API server, scheduler and DAG processor run as processes with LocalExecutor on a fresh
PostgreSQL metadata database; the tasks log to the real PostgreSQL-backed tracking server. Each
city's features event (the city is its partition key) must trigger a training run for that
city alone, which must register its version; a city whose processing fails must hold back no
other city's training.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from support.dagworld import (
    CITIES,
    LOGICAL_DATE,
    SUMMARY_DAYS,
    WHOLE_CITY_TASKS,
    WINDOW_DAYS,
    AirflowEnv,
    chunk_labels,
    day_labels,
    fresh_lake,
    pipeline_config,
)
from support.deployment import (
    RUN_TIMEOUT_S,
    pipeline_deployment,
    registered_versions,
    training_runs,
    unsuccessful,
)
from support.tracking_server import TrackingServer


@pytest.mark.slow
def test_a_run_triggered_through_the_rest_api_succeeds_and_triggers_training(
    airflow_env: AirflowEnv, tracking_server: TrackingServer, tmp_path: Path
) -> None:
    started = time.monotonic()
    lake = fresh_lake(airflow_env.lake, tmp_path)  # nothing processed yet
    config = pipeline_config(lake, **WHOLE_CITY_TASKS)
    with pipeline_deployment(tmp_path, config, tracking_server.uri) as (airflow, prefix):
        run_id = airflow.trigger("matchmaking_data", LOGICAL_DATE.isoformat())
        data = airflow.wait_for_run("matchmaking_data", run_id, RUN_TIMEOUT_S)
        data_tis = airflow.task_instances("matchmaking_data", run_id)
        assert data["state"] == "success", unsuccessful(data_tis)
        # The fan-out ran on the executor, each city's missing days in one process_day
        # instance that summarised them too (days_per_task; the next test maps one per
        # (city, day)), so summarise mapped none.
        mapped = [t for t in data_tis if t["task_id"] == "process_day"]
        assert {t["state"] for t in mapped} == {"success"}, mapped
        assert {t["rendered_map_index"] for t in mapped} == chunk_labels(CITIES, WINDOW_DAYS)
        summarised = [(t["map_index"], t["state"]) for t in data_tis if t["task_id"] == "summarise"]
        assert summarised == [(-1, "skipped")]
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


def _label(ti: dict[str, Any]) -> str:
    label = str(ti["rendered_map_index"])
    if ti["task_id"] in ("process", "publish") and label == str(ti["map_index"]):
        return CITIES[ti["map_index"]]
    return label


@pytest.mark.slow
def test_a_city_whose_processing_fails_holds_back_no_other_citys_training(
    airflow_env: AirflowEnv, tracking_server: TrackingServer, tmp_path: Path
) -> None:
    # A copy of the tiny world in which one of Bangkok's raw partitions is not parquet.
    lake = fresh_lake(airflow_env.lake, tmp_path)
    broken = lake / "raw" / "city=bangkok" / "date=2026-08-09" / "bookings.parquet"
    assert broken.exists()
    broken.write_bytes(b"not parquet: a truncated upload")
    with pipeline_deployment(tmp_path, pipeline_config(lake), tracking_server.uri) as (
        airflow,
        prefix,
    ):
        run_id = airflow.trigger("matchmaking_data", LOGICAL_DATE.isoformat())
        data = airflow.wait_for_run("matchmaking_data", run_id, RUN_TIMEOUT_S)
        assert data["state"] == "failed"
        # Task instances by their label: the city, or "city day" for the per-day tasks (one
        # that never ran shows its map index: the city groups are mapped over CITIES).
        tis = {
            (t["task_id"], _label(t)): t for t in airflow.task_instances("matchmaking_data", run_id)
        }
        # The broken day failed its own summarise task after its retry, and its process_day
        # on the same file; the Bangkok day whose history needs it failed naming it; the day
        # before it was built.
        states = {k: t["state"] for k, t in tis.items() if k[0] in ("summarise", "process_day")}
        failed_summaries = {("summarise", "bangkok 2026-08-09")}
        failed_days = {("process_day", f"bangkok 2026-08-{d:02d}") for d in (9, 10)}
        assert {k for k, v in states.items() if v == "failed"} == failed_summaries | failed_days
        assert set(states) == {("summarise", c) for c in day_labels(CITIES, SUMMARY_DAYS)} | {
            ("process_day", c) for c in day_labels(CITIES, WINDOW_DAYS)
        }
        assert tis[("summarise", "bangkok 2026-08-09")]["try_number"] == 2
        assert {v for k, v in states.items() if k not in failed_summaries | failed_days} == {
            "success"
        }
        # Bangkok's window failed after its retry; Jakarta processed and published all the same.
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
