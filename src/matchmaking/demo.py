"""``matchmaking demo``: the main job end to end on the embedded defaults.

World -> process (training and holdout windows) -> train -> first version to Production ->
evaluate, for three cities, with MLflow in a local SQLite store under ``data/``.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta

import typer
from mlflow.tracking import MlflowClient

from matchmaking import tracking
from matchmaking.config import Settings
from matchmaking.evaluation.evaluate import EvaluationResult, evaluate, format_summary
from matchmaking.features.history import HISTORY_DAYS
from matchmaking.pipeline import windows
from matchmaking.processing.step import process
from matchmaking.registry.production import current_production, set_production
from matchmaking.training.params import load_params
from matchmaking.training.train import train
from matchmaking.world.generate import generate_world

logger = logging.getLogger(__name__)

DEMO_CITIES = ("jakarta", "bangkok", "ho-chi-minh-city")
TRAIN_DAYS = 28
HOLDOUT_DAYS = 7


def run_demo(settings: Settings, days: int = 28, seed: int = 42) -> list[EvaluationResult]:
    """Run the demo and print what happened; returns the evaluation of each city."""
    start = date(2026, 8, 1)
    total_days = HISTORY_DAYS + days + HOLDOUT_DAYS
    end = start + timedelta(days=total_days - 1)
    echo = typer.echo
    echo(f"== world: {', '.join(DEMO_CITIES)}, {start}..{end} (seed {seed})")
    summary = generate_world(
        cities=list(DEMO_CITIES),
        start=start,
        days=total_days,
        seed=seed,
        out=settings.lake_dir,
        scale=0.002,
        bookings_per_day=None,
        progress=True,
    )
    echo(summary.to_table())
    w = windows(end, days, HOLDOUT_DAYS)
    uri = tracking.configure(settings)
    client = MlflowClient()
    params = load_params()
    results = []
    for city in DEMO_CITIES:
        echo(
            f"\n== {city}: process {w.train_start}..{w.train_end} and holdout "
            f"{w.holdout_start}..{w.holdout_end}"
        )
        features = process(settings, city, w.train_start, w.train_end)
        holdout = process(settings, city, w.holdout_start, w.holdout_end)
        echo(
            f"   features {features.rows} rows ({features.quarantined} quarantined), "
            f"holdout {holdout.rows} rows"
        )
        trained = train(settings, city, features.dataset_dir, params, features.run_id)
        echo(
            f"   trained {trained.model_name} v{trained.version} ({trained.objective})"
            f"{' [reused]' if trained.reused else ''}"
        )
        if current_production(client, trained.model_name) is None:
            set_production(
                client,
                trained.model_name,
                trained.version,
                reason="first version of the city: promoted on registration (demo)",
                actor="matchmaking demo",
            )
            echo(f"   {trained.model_name} v{trained.version} -> Production (first version)")
        results.append(evaluate(settings, city, trained.model_uri, holdout.dataset_dir))
    echo("\n== evaluation on the holdout (replay: one offer per booking, same draws per policy)")
    echo(format_summary(results))
    echo(f"\nMLflow store: {uri}\nbrowse it: .venv/bin/mlflow ui --backend-store-uri {uri}")
    echo("serve the Production models: make serve")
    return results
