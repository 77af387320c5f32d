"""matchmaking_train: train, evaluate (and, where configured, promote) each city's model.

Owned by data science (the ``train`` / ``evaluate`` MLflow projects and their parameters).
Runs on every event of the ``matchmaking_features`` asset that ``matchmaking_data`` publishes
and uses the datasets that event names; a manual run uses the asset's latest event. Each city
runs ``train`` (which reuses the version already trained on the same data, code and params)
then ``evaluate`` on the holdout. The promotion gate runs only when ``promotion.enabled`` is
set in ``config/pipeline.yaml``: by default CI promotes. Logic lives in
``matchmaking.orchestration``; this file only wires it.
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
    dag_id="matchmaking_train",
    schedule=[FEATURES],
    **CONFIG.dag_defaults(owner="data-science"),
    tags=["matchmaking", "training"],
    doc_md=__doc__,
)
def matchmaking_train() -> None:
    @task(inlets=[FEATURES])
    def plan(
        *, triggering_asset_events: Any = None, inlet_events: Any = None
    ) -> list[dict[str, Any]]:
        from matchmaking.errors import InputError
        from matchmaking.orchestration.tasks import plan_training

        events = list(triggering_asset_events[FEATURES]) if triggering_asset_events else []
        if not events:  # a manual run: the asset's latest event
            events = list(inlet_events[FEATURES][-1:])
        if not events:
            raise InputError("no matchmaking_features event yet; run matchmaking_data first")
        return plan_training(CONFIG, dict(events[-1].extra))

    @task(max_active_tis_per_dag=CONFIG.max_parallel_cities, map_index_template="{{ item.city }}")
    def train(item: dict[str, Any]) -> dict[str, Any]:
        from matchmaking.orchestration.tasks import train_city

        return train_city(CONFIG, item)

    @task(max_active_tis_per_dag=CONFIG.max_parallel_cities)
    def evaluate(trained: dict[str, Any]) -> dict[str, Any]:
        from matchmaking.orchestration.tasks import evaluate_city

        return evaluate_city(CONFIG, trained)

    evaluated = evaluate.expand(trained=train.expand(item=plan()))

    if CONFIG.promotion.enabled:

        @task
        def promote(evaluated: dict[str, Any], *, dag_run: Any = None) -> dict[str, Any]:
            from matchmaking.orchestration.tasks import promote_city

            return promote_city(CONFIG, evaluated, actor=f"airflow:{dag_run.run_id}")

        promote.expand(evaluated=evaluated)


matchmaking_train()
