"""matchmaking_train: train, evaluate (and, where configured, promote) one city's model per run.

Owned by data science (the ``train`` / ``evaluate`` MLflow projects and their parameters).
Scheduled on the partitioned ``matchmaking_features`` asset: each city's event (partition key:
the city id) queues a run for that city alone, on the datasets its event names, so a city whose
processing failed holds back no other. A manual run trains the run's partition key, or without
one every configured city's latest event. Each city runs ``train`` (which reuses the version
already trained on the same data, code and params) then ``evaluate`` on the holdout, on its
executor queue (``queues``). The promotion gate runs only when ``promotion.enabled`` is set in
``config/pipeline.yaml``: by default CI promotes.

Country models (``country_models``, docs/pooled.md): ``plan_countries`` reads the asset's
latest events and plans the run's city's country (every country in a manual run) when it has
at least ``min_cities`` configured cities whose newest events are all of one day;
``train_country`` fits its pooled model (reusing the version of identical data, so the runs of
the country's other cities that day register nothing new), and ``promote_country`` gates it on
each city's holdout when promotion is enabled.

Logic lives in ``matchmaking.orchestration``; this file only wires it.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import (
    Asset,
    AssetAll,
    PartitionedAssetTimetable,
    dag,
    get_current_context,
    task,
    task_group,
)

from matchmaking.orchestration.config import (
    FEATURES_ASSET_NAME,
    features_asset_uri,
    load_pipeline_config,
)

CONFIG = load_pipeline_config()
FEATURES = Asset(name=FEATURES_ASSET_NAME, uri=features_asset_uri(CONFIG))
# Events of the last week or so of every city: what a manual run looks through.
MANUAL_LOOKBACK = 8 * len(CONFIG.cities)


@dag(
    dag_id="matchmaking_train",
    schedule=PartitionedAssetTimetable(assets=AssetAll(FEATURES)),
    **CONFIG.dag_defaults(owner="data-science", max_active_runs=CONFIG.max_parallel_cities),
    tags=["matchmaking", "training"],
    doc_md=__doc__,
)
def matchmaking_train() -> None:
    for queue in CONFIG.cities_by_queue():
        suffix = CONFIG.task_suffix(queue)

        @task(task_id=f"plan{suffix}", queue=CONFIG.default_queue, inlets=[FEATURES])
        def plan(
            queue: str,
            *,
            dag_run: Any = None,
            triggering_asset_events: Any = None,
            inlet_events: Any = None,
        ) -> list[dict[str, Any]]:
            from matchmaking.errors import InputError
            from matchmaking.orchestration.tasks import plan_by_queue

            events = list(triggering_asset_events[FEATURES]) if triggering_asset_events else []
            if not events:  # a manual run: the asset's latest events
                events = list(inlet_events[FEATURES][-MANUAL_LOOKBACK:])
            if not events:
                raise InputError("no matchmaking_features event yet; run matchmaking_data first")
            extras = [dict(e.extra) for e in events]
            return plan_by_queue(CONFIG, extras, dag_run.partition_key)[queue]

        @task(
            task_id=f"train{suffix}",
            queue=queue,
            executor_config=CONFIG.executor_config(queue),
            max_active_tis_per_dag=CONFIG.max_parallel_cities,
            map_index_template="{{ city_id }}",
        )
        def train(item: dict[str, Any]) -> dict[str, Any]:
            from matchmaking.orchestration.tasks import train_city

            get_current_context()["city_id"] = item["city"]  # type: ignore[typeddict-unknown-key]

            return train_city(CONFIG, item)

        @task(
            task_id=f"evaluate{suffix}",
            queue=queue,
            executor_config=CONFIG.executor_config(queue),
            max_active_tis_per_dag=CONFIG.max_parallel_cities,
        )
        def evaluate(trained: dict[str, Any]) -> dict[str, Any]:
            from matchmaking.orchestration.tasks import evaluate_city

            return evaluate_city(CONFIG, trained)

        @task(
            task_id=f"promote{suffix}", queue=queue, executor_config=CONFIG.executor_config(queue)
        )
        def promote(evaluated: dict[str, Any], *, dag_run: Any = None) -> dict[str, Any]:
            from matchmaking.orchestration.tasks import promote_city

            return promote_city(CONFIG, evaluated, actor=f"airflow:{dag_run.run_id}")

        @task_group(group_id=f"model{suffix}", prefix_group_id=False)
        def city_model(item: dict[str, Any]) -> None:
            evaluated = evaluate(train(item))
            if CONFIG.promotion.enabled:
                promote(evaluated)

        city_model.expand(item=plan(queue))

    if CONFIG.country_models.enabled:

        @task(task_id="plan_countries", queue=CONFIG.default_queue, inlets=[FEATURES])
        def plan_countries(
            *, dag_run: Any = None, inlet_events: Any = None
        ) -> list[dict[str, Any]]:
            from matchmaking.orchestration.tasks import plan_countries as plan_of

            events = list(inlet_events[FEATURES][-MANUAL_LOOKBACK:])
            return plan_of(CONFIG, [dict(e.extra) for e in events], dag_run.partition_key)

        @task(
            task_id="train_country",
            queue=CONFIG.default_queue,
            max_active_tis_per_dag=CONFIG.max_parallel_cities,
            map_index_template="{{ country }}",
        )
        def train_country(item: dict[str, Any]) -> dict[str, Any]:
            from matchmaking.orchestration.tasks import train_country as train_of

            get_current_context()["country"] = item["country"]  # type: ignore[typeddict-unknown-key]
            return train_of(CONFIG, item)

        @task(task_id="promote_country", queue=CONFIG.default_queue)
        def promote_country(trained: dict[str, Any], *, dag_run: Any = None) -> dict[str, Any]:
            from matchmaking.orchestration.tasks import promote_country as promote_of

            return promote_of(CONFIG, trained, actor=f"airflow:{dag_run.run_id}")

        trained_countries = train_country.expand(item=plan_countries())
        if CONFIG.promotion.enabled:
            promote_country.expand(trained=trained_countries)


matchmaking_train()
