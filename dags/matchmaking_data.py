"""matchmaking_data: process each configured city's raw data into feature datasets.

Owned by data engineering. For the run of day D (its logical date), each city runs the
``process_data`` MLflow project twice: the holdout window ending D - lag_days and the training
window before it (``config/pipeline.yaml``). Then one event on the ``matchmaking_features``
asset carries every city's dataset URIs and process run ids to ``matchmaking_train``.
Logic lives in ``matchmaking.orchestration``; this file only wires it.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, dag, task

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
    @task(max_active_tis_per_dag=CONFIG.max_parallel_cities, map_index_template="{{ city }}")
    def process(city: str, *, logical_date: Any = None, dag_run: Any = None) -> dict[str, Any]:
        from matchmaking.orchestration.config import run_day
        from matchmaking.orchestration.tasks import process_city

        return process_city(CONFIG, city, run_day(logical_date, dag_run.run_after))

    @task(outlets=[FEATURES])
    def publish(
        results: list[dict[str, Any]],
        *,
        logical_date: Any = None,
        dag_run: Any = None,
        outlet_events: Any = None,
    ) -> dict[str, Any]:
        from matchmaking.orchestration.config import run_day
        from matchmaking.orchestration.tasks import features_event

        cities = [results[i] for i in range(len(results))]  # by index: no probing past the end
        extra = features_event(run_day(logical_date, dag_run.run_after), cities)
        outlet_events[FEATURES].extra = extra
        return extra

    publish(process.expand(city=CONFIG.cities))


matchmaking_data()
