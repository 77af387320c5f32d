"""``matchmaking demo``: one day of the daily retrain through Airflow, on the embedded defaults.

World -> ``matchmaking_data`` (process each city's training and holdout windows) ->
``matchmaking_train`` (train, evaluate) run in-process with ``dag.test()``: Airflow metadata
in SQLite under ``data/airflow``, MLflow in a SQLite store under ``data/``. The first version
of each city then goes straight to Production; the demo shows the registry and the evaluation.

The steps run as processes of their own (MLflow Projects): what they print on stdout (each
city's evaluation table, dataset and model lines) goes to ``data/airflow/steps.log``, so the
demo prints every table once, all cities together; their progress (stderr) stays on screen.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer
import yaml

from matchmaking.config import Settings
from matchmaking.features.history import HISTORY_DAYS

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from matchmaking.evaluation.evaluate import EvaluationResult

logger = logging.getLogger(__name__)

DEMO_CITIES = ("jakarta", "bangkok", "ho-chi-minh-city")
TRAIN_DAYS = 28
HOLDOUT_DAYS = 7


@contextlib.contextmanager
def stdout_to(path: Path) -> Iterator[None]:
    """Send file descriptor 1 (this process's and its children's stdout) to ``path``
    (written afresh)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with path.open("wb") as log:
            os.dup2(log.fileno(), 1)
            try:
                yield
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def run_demo(
    settings: Settings, days: int = 28, seed: int = 42, progress: bool = False
) -> list[EvaluationResult]:
    """Run the demo and print what happened; returns the evaluation of each city.

    ``progress``: show the world generator's bar (the steps decide for themselves, from
    ``MATCHMAKING_PROGRESS`` or their stderr).
    """
    from matchmaking.world.generate import generate_world

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
        progress=progress,
    )
    echo(summary.to_table())

    data_dir = settings.data_dir.resolve()
    airflow_home = data_dir / "airflow"
    airflow_home.mkdir(parents=True, exist_ok=True)
    config = airflow_home / "pipeline.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cities": list(DEMO_CITIES),
                "lake_uri": (data_dir / "lake").as_uri(),
                "windows": {"train_days": days, "holdout_days": HOLDOUT_DAYS, "lag_days": 1},
                "retries": 0,
            },
            sort_keys=False,
        )
    )
    from matchmaking.orchestration.local import configure_airflow, run_day

    configure_airflow(airflow_home, config)
    day = end + timedelta(days=1)
    echo(
        f"\n== Airflow (dag.test, metadata in {airflow_home}): matchmaking_data for {day}, "
        "then matchmaking_train on its features asset"
    )
    steps_log = airflow_home / "steps.log"
    echo(f"   output of the steps: {steps_log}")
    with stdout_to(steps_log):
        outcome = run_day(day)
    for city, published in outcome.event["cities"].items():
        echo(
            f"   {city}: train {'..'.join(published['window'])}, holdout "
            f"{'..'.join(published['holdout_window'])} -> {published['features_uri']}"
        )
    results = _show(settings, outcome.evaluated)
    from matchmaking.reporting.report import build_report

    built = build_report(settings)
    echo(
        f"\n== fleet report: {built.path}\n   (logged as run {built.run_id}: {built.artifact_uri})"
    )
    return results


def _show(settings: Settings, evaluated: list[dict[str, object]]) -> list[EvaluationResult]:
    """First version of each city to Production; print the registry and the evaluation."""
    from mlflow.tracking import MlflowClient

    from matchmaking import tracking
    from matchmaking.evaluation.evaluate import artifact_lines, format_summary
    from matchmaking.registry.production import current_production, set_production

    uri = tracking.configure(settings)
    client = MlflowClient()
    echo = typer.echo
    echo("\n== registry")
    for item in evaluated:
        name, version = str(item["model_name"]), str(item["version"])
        if current_production(client, name) is None:
            set_production(
                client,
                name,
                version,
                reason="first version of the city: promoted on registration (demo)",
                actor="matchmaking demo",
            )
        prod = current_production(client, name)
        echo(
            f"   {name}: trained v{version}{' (reused)' if item['reused'] else ''}, "
            f"Production v{prod.version if prod else '-'}"
        )
    results = [_evaluation(client, str(item["evaluate_run_id"])) for item in evaluated]
    echo("\n== evaluation on the holdout (logged data, off-policy estimates, simulator checks)")
    echo(format_summary(results))
    for r in results:
        echo(f"   {r.city}: " + "\n   ".join([f"evaluate run {r.run_id}", *artifact_lines(r)]))
    echo(f"\nMLflow store: {uri}\nbrowse it: .venv/bin/mlflow ui --backend-store-uri {uri}")
    echo("serve the Production models: make serve")
    return results


def _evaluation(client: MlflowClient, run_id: str) -> EvaluationResult:
    """An ``EvaluationResult`` rebuilt from the metrics the evaluate run logged."""
    from matchmaking.evaluation.evaluate import result_from_run

    return result_from_run(client, run_id)
