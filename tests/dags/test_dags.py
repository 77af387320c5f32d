"""The DAG files parse cleanly, and both DAGs run end to end with ``dag.test()``.

The end-to-end runs use the real PostgreSQL-backed MLflow tracking server and a PostgreSQL
Airflow metadata database: two cities, 300 bookings a day, 20 boosting rounds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.dagworld import (
    CITIES,
    DAGS_DIR,
    LOGICAL_DATE,
    SUMMARY_DAYS,
    WINDOW_DAYS,
    AirflowEnv,
    day_labels,
    fresh_lake,
    pipeline_config,
)
from support.tracking_server import TrackingServer

from matchmaking.orchestration.local import features_events

DAG_IDS = {"matchmaking_data", "matchmaking_train"}


def _dagbag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


def _mapped_over(task: Any) -> dict[str, Any]:
    """What the task's city group is mapped over (its ``expand`` arguments)."""
    return dict(task.task_group._expand_input.value)


def test_dag_files_import_cleanly_with_tags_retries_and_no_catchup(airflow_env: AirflowEnv) -> None:
    bag = _dagbag()
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == DAG_IDS
    for dag_id in DAG_IDS:
        dag = bag.dags[dag_id]
        assert dag.catchup is False
        assert "matchmaking" in dag.tags and len(dag.tags) >= 2
        # One data run at a time; training runs one partition (city) per run, so as many
        # runs as cities may train at once.
        assert dag.max_active_runs == (1 if dag_id == "matchmaking_data" else 16)
        for task in dag.tasks:
            assert task.retries == 1, f"{dag_id}.{task.task_id} has no retries"


def test_tasks_are_mapped_over_the_configured_cities(airflow_env: AirflowEnv) -> None:
    from airflow.sdk import Asset

    bag = _dagbag()
    data, train = bag.dags["matchmaking_data"], bag.dags["matchmaking_train"]
    process = data.get_task("process")
    assert _mapped_over(process) == {"city": CITIES}
    assert process.max_active_tis_per_dag == 16
    publish = data.get_task("publish")
    (features,) = publish.outlets
    assert isinstance(features, Asset) and features.name == "matchmaking_features"
    assert features.uri == f"{airflow_env.lake.as_uri()}/features"
    # Each city publishes after its own process task only (a mapped task group per city).
    assert publish.upstream_task_ids == {"process"}
    assert publish.task_group is process.task_group
    # The (city, day) fan-out before it: the plan's missing summaries, then the missing
    # feature days, each mapped (expand_kwargs) over its list of the plan; a failed day of
    # one city stops neither the other cities' days nor their windows (all_done).
    assert data.get_task("plan_summarise").upstream_task_ids == {"plan_days"}
    summarise, process_day = data.get_task("summarise"), data.get_task("process_day")
    for mapped, plan in ((summarise, "plan_summarise"), (process_day, "plan_process_day")):
        assert type(mapped).__name__ == "DecoratedMappedOperator"
        assert type(mapped.op_kwargs_expand_input).__name__ == "ListOfDictsExpandInput"
        assert mapped.op_kwargs_expand_input.value.operator.task_id == plan
        assert mapped.max_active_tis_per_dag == 16
    assert process_day.upstream_task_ids == {"plan_process_day", "summarise"}
    assert process_day.trigger_rule == "all_done"
    assert process.upstream_task_ids == {"process_day"}
    assert process.trigger_rule == "all_done"
    # The training DAG runs on that asset, one run per partition (city), and maps
    # train -> evaluate over plan's cities in a group per city.
    assert type(train.timetable).__name__ == "PartitionedAssetTimetable"
    assert list(train.timetable.asset_condition.objects) == [features]
    assert {t.task_id for t in train.tasks} == {
        "plan",
        "train",
        "evaluate",
        "plan_countries",
        "train_country",
    }
    assert train.get_task("train").upstream_task_ids == {"plan"}
    assert train.get_task("evaluate").upstream_task_ids == {"train"}
    # Country models alongside: planned from the asset's events, one mapped train per country.
    assert train.get_task("train_country").upstream_task_ids == {"plan_countries"}
    assert list(train.get_task("plan_countries").inlets) == [features]


def test_a_config_change_adds_a_city_and_the_promotion_gate(
    airflow_env: AirflowEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "pipeline.yaml"
    overrides = {"cities": [*CITIES, "surabaya"], "promotion": {"enabled": True}}
    config.write_text(yaml.safe_dump(pipeline_config(airflow_env.lake, **overrides)))
    monkeypatch.setenv("MATCHMAKING_PIPELINE_CONFIG", str(config))
    bag = _dagbag()
    assert bag.import_errors == {}
    assert _mapped_over(bag.dags["matchmaking_data"].get_task("process")) == {
        "city": [*CITIES, "surabaya"]
    }
    promote = bag.dags["matchmaking_train"].get_task("promote")
    assert promote.upstream_task_ids == {"evaluate"}
    promote_country = bag.dags["matchmaking_train"].get_task("promote_country")
    assert promote_country.upstream_task_ids == {"train_country"}


def test_heavy_cities_get_task_groups_on_their_own_queue(
    airflow_env: AirflowEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "pipeline.yaml"
    overrides = {"cities": [*CITIES, "surabaya"], "queues": {"jakarta": "heavy"}}
    config.write_text(yaml.safe_dump(pipeline_config(airflow_env.lake, **overrides)))
    monkeypatch.setenv("MATCHMAKING_PIPELINE_CONFIG", str(config))
    bag = _dagbag()
    assert bag.import_errors == {}
    data, train = bag.dags["matchmaking_data"], bag.dags["matchmaking_train"]
    assert _mapped_over(data.get_task("process")) == {"city": ["bangkok", "surabaya"]}
    assert _mapped_over(data.get_task("process_heavy")) == {"city": ["jakarta"]}
    queues = {t.task_id: t.queue for dag in (data, train) for t in dag.tasks}
    assert queues == {
        "plan_days": "default",
        "plan_summarise": "default",
        "plan_process_day": "default",
        "plan_summarise_heavy": "default",
        "plan_process_day_heavy": "default",
        "summarise": "default",
        "process_day": "default",
        "summarise_heavy": "heavy",
        "process_day_heavy": "heavy",
        "process": "default",
        "publish": "default",
        "process_heavy": "heavy",
        "publish_heavy": "heavy",
        "plan": "default",
        "train": "default",
        "evaluate": "default",
        "plan_heavy": "default",
        "train_heavy": "heavy",
        "evaluate_heavy": "heavy",
        "plan_countries": "default",
        "train_country": "default",
    }
    assert train.get_task("evaluate_heavy").upstream_task_ids == {"train_heavy"}


def test_the_packaged_config_parses_with_retries_and_a_daily_schedule(
    airflow_env: AirflowEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MATCHMAKING_PIPELINE_CONFIG")
    bag = _dagbag()
    assert bag.import_errors == {}
    data = bag.dags["matchmaking_data"]
    assert data.timetable.expression == "0 2 * * *"
    assert all(t.retries == 2 for dag in bag.dags.values() for t in dag.tasks)
    assert "promote" not in bag.dags["matchmaking_train"].task_ids  # off by default: CI promotes


# -- end to end --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayRun:
    data_states: dict[str, str]
    train_states: dict[str, str]
    event: dict[str, Any]
    trained: list[dict[str, Any]]
    labels: dict[str, set[str]]  # task id -> its instances' labels (rendered map indexes)


def _states(dag_run: Any) -> dict[str, str]:
    return {f"{ti.task_id}[{ti.map_index}]": str(ti.state) for ti in dag_run.get_task_instances()}


def _train_states_ok(states: dict[str, str]) -> bool:
    """Every city task succeeded; ``train_country`` mapped over no country (the test's cities
    are of two countries, so no country has the two cities a country model needs) is skipped."""
    country = {k: v for k, v in states.items() if k.startswith("train_country")}
    others = {v for k, v in states.items() if k not in country}
    return others == {"success"} and set(country.values()) <= {"skipped"}


def _labels(dag_run: Any) -> dict[str, set[str]]:
    labels: dict[str, set[str]] = {}
    for ti in dag_run.get_task_instances():
        if ti.map_index >= 0:
            labels.setdefault(ti.task_id, set()).add(ti.rendered_map_index)
    return labels


def _xcoms(dag_run: Any, task_id: str) -> list[dict[str, Any]]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(XComModel)
            .where(XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id)
            .where(XComModel.task_id == task_id, XComModel.key == "return_value")
            .order_by(XComModel.map_index)
        ).all()
        return [XComModel.deserialize_value(row) for row in rows]


def run_day(env: AirflowEnv, server: TrackingServer) -> DayRun:
    """``dag.test()`` of the data DAG for ``LOGICAL_DATE``, then of the training DAG."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.pipeline_vars.items():
            mp.setenv(key, value)
        mp.setenv("MLFLOW_TRACKING_URI", server.uri)
        bag = _dagbag()
        data_run = bag.dags["matchmaking_data"].test(logical_date=LOGICAL_DATE)
        event = features_events(data_run.run_id)
        train_run = bag.dags["matchmaking_train"].test(logical_date=None)
        return DayRun(
            _states(data_run),
            _states(train_run),
            event,
            _xcoms(train_run, "train"),
            _labels(data_run),
        )


@pytest.fixture(scope="module")
def e2e_env(airflow_session: AirflowEnv, tmp_path_factory: pytest.TempPathFactory) -> AirflowEnv:
    """The session's Airflow on a lake of its own: the world's raw data, nothing processed
    (other tests of the session process the shared lake)."""
    lake = fresh_lake(airflow_session.lake, tmp_path_factory.mktemp("e2e"))
    config = lake.parent.parent / "pipeline.yaml"
    config.write_text(yaml.safe_dump(pipeline_config(lake)))
    vars_ = {**airflow_session.pipeline_vars, "MATCHMAKING_PIPELINE_CONFIG": str(config)}
    return dataclasses.replace(airflow_session, lake=lake, config=config, pipeline_vars=vars_)


@pytest.fixture(scope="module")
def first_day(e2e_env: AirflowEnv, tracking_server: TrackingServer) -> DayRun:
    return run_day(e2e_env, tracking_server)


@pytest.fixture
def client(remote_tracking: str) -> Iterator[Any]:
    from mlflow.tracking import MlflowClient

    yield MlflowClient(tracking_uri=remote_tracking, registry_uri=remote_tracking)


def _versions(client: Any, prefix: str) -> dict[str, list[str]]:
    return {
        city: sorted(mv.version for mv in client.search_model_versions(f"name='{prefix}-{city}'"))
        for city in CITIES
    }


@pytest.mark.slow
def test_one_day_through_both_dags_registers_a_version_per_city(
    first_day: DayRun, e2e_env: AirflowEnv, client: Any
) -> None:
    airflow_env = e2e_env
    assert set(first_day.data_states.values()) == {"success"}, first_day.data_states
    assert _train_states_ok(first_day.train_states), first_day.train_states
    assert sorted(k for k in first_day.data_states if k.startswith("process[")) == [
        "process[0]",
        "process[1]",
    ]
    # On a fresh lake: one summarise instance per (city, day) of the windows and their
    # history, one process_day per (city, day) of the windows, each labelled "city day".
    assert first_day.labels["summarise"] == day_labels(CITIES, SUMMARY_DAYS)
    assert first_day.labels["process_day"] == day_labels(CITIES, WINDOW_DAYS)
    assert len([k for k in first_day.data_states if k.startswith("process_day[")]) == 6
    # The asset event names each city's datasets and process runs: URIs and run ids only.
    assert first_day.event["day"] == "2026-08-11"
    assert set(first_day.event["cities"]) == set(CITIES)
    for city, published in first_day.event["cities"].items():
        assert published["window"] == ["2026-08-08", "2026-08-09"]
        assert published["holdout_window"] == ["2026-08-10", "2026-08-10"]
        assert published["features_uri"].startswith(airflow_env.lake.as_uri())
        for key in ("process_run_id", "holdout_process_run_id"):
            run = client.get_run(published[key])
            assert run.info.status == "FINISHED"
            assert (
                run.data.tags["features_uri"]
                == published[key.replace("process_run_id", "") + "features_uri"]
            )
            assert run.data.params["city"] == city
    assert _versions(client, airflow_env.model_prefix) == {c: ["1"] for c in CITIES}
    # The run ids went through XCom: train ran on the event's features, evaluate on its version.
    for trained in first_day.trained:
        city = trained["city"]
        assert trained["reused"] is False and trained["version"] == "1"
        mv = client.get_model_version(trained["model_name"], "1")
        assert mv.run_id == trained["train_run_id"]
        train_tags = client.get_run(mv.run_id).data.tags
        assert train_tags["process_run_id"] == first_day.event["cities"][city]["process_run_id"]
        assert train_tags["mlflow.project.entryPoint"] == "train"


@pytest.mark.slow
def test_rerunning_the_same_day_registers_nothing_new(
    first_day: DayRun, e2e_env: AirflowEnv, tracking_server: TrackingServer, client: Any
) -> None:
    airflow_env = e2e_env
    again = run_day(airflow_env, tracking_server)
    # Every day is published: the plan maps no (city, day) at all (one skipped instance each).
    mapped_days = {
        k: v for k, v in again.data_states.items() if k.startswith(("summarise", "process_day"))
    }
    assert mapped_days == {"summarise[-1]": "skipped", "process_day[-1]": "skipped"}, mapped_days
    assert "summarise" not in again.labels and "process_day" not in again.labels
    rest = {k: v for k, v in again.data_states.items() if k not in mapped_days}
    assert set(rest.values()) == {"success"}, again.data_states
    assert _train_states_ok(again.train_states), again.train_states
    # Same content-addressed datasets, new process runs.
    for city in CITIES:
        before, after = first_day.event["cities"][city], again.event["cities"][city]
        assert after["features_uri"] == before["features_uri"]
        assert after["data_digest"] == before["data_digest"]
        assert after["process_run_id"] != before["process_run_id"]
    assert _versions(client, airflow_env.model_prefix) == {c: ["1"] for c in CITIES}
    for trained in again.trained:
        assert trained["reused"] is True and trained["version"] == "1"
        tags = client.get_run(trained["train_run_id"]).data.tags
        assert tags["reused_version"] == "true" and tags["registered_version"] == "1"


@pytest.mark.slow
def test_a_failed_train_task_leaves_the_registry_untouched(
    first_day: DayRun, e2e_env: AirflowEnv, client: Any
) -> None:
    airflow_env = e2e_env
    from mlflow.exceptions import ExecutionException

    from matchmaking.orchestration.config import load_pipeline_config
    from matchmaking.orchestration.tasks import train_city

    cfg = load_pipeline_config(airflow_env.config)
    broken = cfg.model_copy(update={"train_params": {**cfg.train_params, "num_leaves": "many"}})
    item = first_day.event["cities"]["jakarta"]
    with pytest.raises(ExecutionException):
        train_city(broken, item)
    assert _versions(client, airflow_env.model_prefix) == {c: ["1"] for c in CITIES}
