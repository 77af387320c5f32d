"""The DAGs on CeleryExecutor: two real workers, a heavy city on its own queue.

Scheduler, DAG processor, API server and two ``airflow celery worker`` processes; Redis
(``MATCHMAKING_TEST_REDIS_URL``, default db 13 of the machine's Redis) is the broker, a fresh
PostgreSQL database is both Airflow's metadata database and Celery's result backend. Four cities
of a tiny world; Jakarta is routed to the heavy queue, which only ``worker-b`` listens on
(``worker-b`` also takes default work, ``worker-a`` only default work). Which worker ran each task
instance is read from the result backend (``celery_taskmeta.worker``, extended results) joined
on the task instance's ``external_executor_id`` (the Celery task id) in the metadata database.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.dagworld import (
    LOGICAL_DATE,
    WHOLE_CITY_TASKS,
    WINDOW_DAYS,
    WORLD_DAYS,
    WORLD_START,
    chunk_labels,
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

from matchmaking.orchestration.config import PipelineConfig

CITIES = ["jakarta", "bangkok", "surabaya", "ho-chi-minh-city"]
HEAVY = "jakarta"
REDIS_URL_ENV = "MATCHMAKING_TEST_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"


@pytest.fixture(scope="module")
def four_city_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw data for four cities, 300 bookings a day over the tiny world's dates."""
    from matchmaking.world.generate import generate_world

    lake = tmp_path_factory.mktemp("celery-world") / "data" / "lake"
    generate_world(CITIES, WORLD_START, WORLD_DAYS, 5, lake, 0.002, 300, progress=False)
    return lake


@pytest.fixture
def broker_url() -> Iterator[str]:
    """The machine's Redis (a dedicated db); the run's queue keys are deleted afterwards."""
    import redis

    url = os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL)
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"the CeleryExecutor test needs Redis at {url} ({REDIS_URL_ENV}): {exc}")
    yield url
    client.close()


def _workers_by_task_instance(sql_alchemy_conn: str) -> dict[tuple[str, str, int], str]:
    """(run id, task id, map index) -> the worker (node name before the ``@``) that ran it:
    the task instance's Celery task id (``external_executor_id``) in the result backend."""
    import sqlalchemy

    query = sqlalchemy.text(
        "SELECT ti.run_id, ti.task_id, ti.map_index, c.worker FROM task_instance ti "
        "JOIN celery_taskmeta c ON c.task_id = ti.external_executor_id"
    )
    engine = sqlalchemy.create_engine(sql_alchemy_conn)
    try:
        with engine.connect() as conn:
            return {(r, t, m): str(w).split("@")[0] for r, t, m, w in conn.execute(query)}
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.integration
def test_the_dags_run_on_two_celery_workers_with_the_heavy_city_on_its_own_queue(
    four_city_lake: Path, broker_url: str, tracking_server: TrackingServer, tmp_path: Path
) -> None:
    import redis

    started = time.monotonic()
    token = secrets.token_hex(3)  # queues of this run only: the Redis db may be shared
    default_q, heavy_q = f"t{token}-default", f"t{token}-heavy"
    lake = fresh_lake(four_city_lake, tmp_path)  # nothing processed, a short history
    config = pipeline_config(
        lake, cities=CITIES, default_queue=default_q, queues={HEAVY: heavy_q}, **WHOLE_CITY_TASKS
    )
    cfg = PipelineConfig.model_validate(config)
    heavy_suffix = cfg.task_suffix(heavy_q)

    def on_heavy_queue(task_id: str) -> bool:  # plan_*<suffix> are light: the default queue
        return task_id.endswith(heavy_suffix) and not task_id.startswith("plan")

    workers = {"worker-a": [default_q], "worker-b": [heavy_q, default_q]}
    try:
        with pipeline_deployment(
            tmp_path, config, tracking_server.uri, workers=workers, broker_url=broker_url
        ) as (airflow, prefix):
            run_id = airflow.trigger("matchmaking_data", LOGICAL_DATE.isoformat())
            data = airflow.wait_for_run("matchmaking_data", run_id, RUN_TIMEOUT_S)
            data_tis = airflow.task_instances("matchmaking_data", run_id)
            assert data["state"] == "success", (unsuccessful(data_tis), airflow.logs("worker-a"))
            trained = training_runs(airflow, CITIES)
            assert {c: r["state"] for c, r in trained.items()} == dict.fromkeys(CITIES, "success")
            tis: list[tuple[str, dict[str, Any]]] = [
                (HEAVY if on_heavy_queue(t["task_id"]) else "", t)
                for t in airflow.task_instances("matchmaking_data", run_id)
            ]
            for city, run in trained.items():
                tis += [
                    (city, t)
                    for t in airflow.task_instances("matchmaking_train", run["dag_run_id"])
                ]
            conn = airflow.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
            worker_of = _workers_by_task_instance(conn)
    finally:
        client = redis.Redis.from_url(broker_url)
        for key in client.scan_iter(f"*t{token}-*"):
            client.delete(key)
        client.close()

    # A run's queue group with no city to train maps over nothing: one skipped instance; so
    # does summarise, each city's process_day publishing its summaries (days_per_task).
    skipped = [t for _, t in tis if t["state"] == "skipped"]
    assert all(t["map_index"] == -1 and t["task_id"].startswith(("train", "evaluate"))
               for t in skipped if not t["task_id"].startswith("summarise")), skipped  # fmt: skip
    assert {t["task_id"] for t in skipped if t["task_id"].startswith("summarise")} == {
        "summarise",
        "summarise" + heavy_suffix,
    }
    tis = [(city, t) for city, t in tis if t["state"] != "skipped"]
    assert all(t["state"] == "success" for _, t in tis), [t for _, t in tis]
    ran_on = {(t["task_id"], t["map_index"], city):
              worker_of[(t["dag_run_id"], t["task_id"], t["map_index"])]
              for city, t in tis}  # fmt: skip
    # Both workers ran tasks; every task of the heavy city ran on its queue, on worker-b.
    assert set(ran_on.values()) == {"worker-a", "worker-b"}, ran_on
    heavy = {k: w for k, w in ran_on.items() if on_heavy_queue(k[0])}
    assert {k[0] for k in heavy} == {
        f"{step}{heavy_suffix}"
        for step in ("process_day", "process", "publish", "train", "evaluate")
    }
    # Each city's missing days in one process_day instance (days_per_task), the heavy
    # city's on its queue.
    labels = {t["rendered_map_index"] for _, t in tis if t["task_id"].startswith("process_day")}
    assert labels == chunk_labels(CITIES, WINDOW_DAYS)
    heavy_labels = {
        t["rendered_map_index"] for _, t in tis if t["task_id"] == f"process_day{heavy_suffix}"
    }
    assert heavy_labels == chunk_labels([HEAVY], WINDOW_DAYS)
    assert set(heavy.values()) == {"worker-b"}, heavy
    for city, t in tis:
        expected = heavy_q if on_heavy_queue(t["task_id"]) else default_q
        assert t["queue"] == expected, (city, t["task_id"], t["queue"])
    # Jakarta's training run trained Jakarta, on the heavy queue; the others on the default.
    for city, run in trained.items():
        steps = {
            t["task_id"]
            for _, t in tis
            if t["dag_run_id"] == run["dag_run_id"]
            and not t["task_id"].startswith("plan")
            and t["task_id"] != "train_country"
        }
        suffix = heavy_suffix if city == HEAVY else ""
        assert steps == {f"train{suffix}", f"evaluate{suffix}"}, (city, steps)
    for city in CITIES:
        assert registered_versions(tracking_server.uri, prefix, city) == ["1"]
    # Jakarta and Surabaya are both ID: the run of whichever published last trained the ID
    # country model, once, on the default queue; the other ID run and Bangkok's and Ho Chi
    # Minh City's plan no country.
    pooled = [city for city, t in tis if t["task_id"] == "train_country"]
    assert len(pooled) == 1 and pooled[0] in {"jakarta", "surabaya"}, pooled
    assert registered_versions(tracking_server.uri, prefix, "country-id") == ["1"]
    print(f"celery deployment test: {time.monotonic() - started:.0f} s")
