"""matchmaking_data: process each configured city's raw data into feature datasets.

Owned by data engineering. The run of day D (its logical date) covers, per city, the training
and holdout windows ending D - lag_days (``config/pipeline.yaml``), one city-day at a time:

1. ``plan_days`` lists the (city, day) pairs to build: days whose summary or feature partition
   is not published for today's raw data and code (a rerun plans none).
2. ``summarise`` is mapped over the days missing a summary (validation, per-driver daily
   aggregates), then ``process_day`` over the days missing features (history from the
   summaries), on the city's executor queue: one task instance per (city, day), or per
   ``days_per_task`` days of a city when the configuration says more than 1 (the demo).
3. Each city's ``process`` runs the ``process_data`` MLflow project on both windows, which
   only assembles their manifests from the published days, and ``publish`` emits an event on
   the ``matchmaking_features`` asset with the city as partition key: ``matchmaking_train``
   trains each city on its own event.

A failed (city, day) fails its own task (the other days of a several-day task still run), the
days of that city whose history needs it, and that city's ``process``; every other city's days
run and publish. Tasks are mapped once per executor queue (``queues``). Logic lives in
``matchmaking.orchestration``; this file only wires it.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, dag, get_current_context, task, task_group

from matchmaking.orchestration.config import (
    FEATURES_ASSET_NAME,
    features_asset_uri,
    load_pipeline_config,
)

CONFIG = load_pipeline_config()
FEATURES = Asset(name=FEATURES_ASSET_NAME, uri=features_asset_uri(CONFIG))


def _label(city: str, days: list[str] | None = None) -> None:
    """The mapped instance's label (``map_index_template``): the city, and its days if any."""
    from matchmaking.orchestration.tasks import day_label

    get_current_context()["label"] = day_label(city, days) if days else city  # type: ignore[typeddict-unknown-key]


@dag(
    dag_id="matchmaking_data",
    schedule=CONFIG.schedule,
    **CONFIG.dag_defaults(owner="data-engineering"),
    tags=["matchmaking", "data"],
    doc_md=__doc__,
)
def matchmaking_data() -> None:
    @task(task_id="plan_days", queue=CONFIG.default_queue)
    def plan_days(*, logical_date: Any = None, dag_run: Any = None) -> dict[str, Any]:
        from matchmaking.orchestration.config import run_day
        from matchmaking.orchestration.tasks import plan_days as plan

        return plan(CONFIG, run_day(logical_date, dag_run.run_after))

    # Airflow maps over a task's return value only (not one key of it): a light task per
    # queue and step hands each mapped task its list of the plan.
    @task(queue=CONFIG.default_queue)
    def pick(plan: dict[str, list[dict[str, str]]], key: str) -> list[dict[str, str]]:
        return plan[key]

    planned = plan_days()
    for queue, cities in CONFIG.cities_by_queue().items():
        suffix = CONFIG.task_suffix(queue)
        on_queue: dict[str, Any] = {
            "queue": queue,
            "executor_config": CONFIG.executor_config(queue),
            "max_active_tis_per_dag": CONFIG.max_parallel_cities,
            "map_index_template": "{{ label }}",
        }

        @task(task_id=f"summarise{suffix}", **on_queue)
        def summarise(city: str, days: list[str]) -> list[dict[str, Any]]:
            from datetime import date

            from matchmaking.orchestration.tasks import summarise_city_days

            _label(city, days)
            return summarise_city_days(CONFIG, city, [date.fromisoformat(d) for d in days])

        # all_done: a failed summary of one city must not stop the other cities' days.
        @task(task_id=f"process_day{suffix}", trigger_rule="all_done", **on_queue)
        def process_day(city: str, days: list[str], summaries: list[str]) -> list[dict[str, Any]]:
            from datetime import date

            from matchmaking.orchestration.tasks import process_city_days

            _label(city, days)
            own = [date.fromisoformat(d) for d in summaries]  # summaries no other task needs
            return process_city_days(CONFIG, city, [date.fromisoformat(d) for d in days], own)

        # all_done: each city checks its own days (a failed day fails only its city).
        @task(task_id=f"process{suffix}", trigger_rule="all_done", **on_queue)
        def process(city: str, *, logical_date: Any = None, dag_run: Any = None) -> dict[str, Any]:
            from matchmaking.orchestration.config import run_day
            from matchmaking.orchestration.tasks import process_city

            _label(city)
            day = run_day(logical_date, dag_run.run_after)
            return process_city(CONFIG, city, day, require_days=True)

        @task(
            task_id=f"publish{suffix}",
            queue=queue,
            executor_config=CONFIG.executor_config(queue),
            outlets=[FEATURES],
            map_index_template="{{ label }}",
        )
        def publish(result: dict[str, Any], *, outlet_events: Any = None) -> dict[str, Any]:
            _label(result["city"])
            outlet_events[FEATURES].extra = result
            outlet_events[FEATURES].add_partitions(result["city"])
            return result

        @task_group(group_id=f"city{suffix}", prefix_group_id=False)
        def city_features(city: str) -> None:
            publish(process(city))

        to_summarise, to_process = (
            pick.override(task_id=f"plan_{step}{suffix}")(planned, CONFIG.plan_key(step, queue))
            for step in ("summarise", "process_day")
        )
        summaries = summarise.expand_kwargs(to_summarise)
        days = process_day.expand_kwargs(to_process)
        summaries >> days >> city_features.expand(city=cities)


matchmaking_data()
