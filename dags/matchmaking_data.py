"""matchmaking_data: process each configured city's raw data into feature datasets.

Owned by data engineering. For the run of day D (its logical date), each city runs the
``process_data`` MLflow project twice: the holdout window ending D - lag_days and the training
window before it (``config/pipeline.yaml``). Then that city's ``publish`` emits an event on the
``matchmaking_features`` asset with the city as partition key and its dataset URIs and process
run ids as extra: ``matchmaking_train`` trains each city on its own event, so a city that fails
holds back no other. Cities are mapped in one task group per executor queue (``queues``).
Logic lives in ``matchmaking.orchestration``; this file only wires it.
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


@dag(
    dag_id="matchmaking_data",
    schedule=CONFIG.schedule,
    **CONFIG.dag_defaults(owner="data-engineering"),
    tags=["matchmaking", "data"],
    doc_md=__doc__,
)
def matchmaking_data() -> None:
    for queue, cities in CONFIG.cities_by_queue().items():
        suffix = CONFIG.task_suffix(queue)

        @task(
            task_id=f"process{suffix}",
            queue=queue,
            executor_config=CONFIG.executor_config(queue),
            max_active_tis_per_dag=CONFIG.max_parallel_cities,
            map_index_template="{{ city_id }}",
        )
        def process(city: str, *, logical_date: Any = None, dag_run: Any = None) -> dict[str, Any]:
            from matchmaking.orchestration.config import run_day
            from matchmaking.orchestration.tasks import process_city

            get_current_context()["city_id"] = city  # type: ignore[typeddict-unknown-key]

            return process_city(CONFIG, city, run_day(logical_date, dag_run.run_after))

        @task(
            task_id=f"publish{suffix}",
            queue=queue,
            executor_config=CONFIG.executor_config(queue),
            outlets=[FEATURES],
            map_index_template="{{ city_id }}",
        )
        def publish(result: dict[str, Any], *, outlet_events: Any = None) -> dict[str, Any]:
            get_current_context()["city_id"] = result["city"]  # type: ignore[typeddict-unknown-key]
            outlet_events[FEATURES].extra = result
            outlet_events[FEATURES].add_partitions(result["city"])
            return result

        @task_group(group_id=f"city{suffix}", prefix_group_id=False)
        def city_features(city: str) -> None:
            # The per-day processing (issue 14) slots in here: docs/scale.md.
            publish(process(city))

        city_features.expand(city=cities)


matchmaking_data()
