"""The chained pipeline: process (train window) -> process (holdout) -> train -> evaluate.

``run_chain`` drives the MLflow Projects in ``mlproject/`` (each step its own run, passing run
ids and dataset URIs along), exactly as ``mlflow run mlproject -e main`` does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from matchmaking import tracking
from matchmaking.config import Settings
from matchmaking.errors import InputError, TrackingError

logger = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parents[2] / "mlproject"


@dataclass(frozen=True)
class Windows:
    train_start: date
    train_end: date
    holdout_start: date
    holdout_end: date


def windows(end: date, train_days: int, holdout_days: int) -> Windows:
    """Training window then a later holdout window, both ending by ``end`` (inclusive)."""
    if train_days < 2 or holdout_days < 1:
        raise InputError("train_days must be >= 2 and holdout_days >= 1")
    holdout_start = end - timedelta(days=holdout_days - 1)
    train_end = holdout_start - timedelta(days=1)
    return Windows(train_end - timedelta(days=train_days - 1), train_end, holdout_start, end)


def _run_step(entry: str, params: dict[str, object], experiment: str) -> str:
    submitted = mlflow.projects.run(
        str(PROJECT_DIR),
        entry_point=entry,
        parameters={k: str(v) for k, v in params.items()},
        env_manager="local",
        experiment_name=experiment,
        synchronous=True,
    )
    return str(submitted.run_id)


def _tag(client: MlflowClient, run_id: str, key: str) -> str:
    value = client.get_run(run_id).data.tags.get(key)
    if not value:
        raise TrackingError(f"run {run_id} has no tag {key!r}; did the step finish?")
    return value


def run_chain(
    settings: Settings,
    city: str,
    end: date,
    train_days: int,
    holdout_days: int,
    train_overrides: dict[str, str],
) -> dict[str, str]:
    """Run every step as its own MLflow Projects run; returns the ids and URIs that flowed."""
    tracking.configure(settings)
    w = windows(end, train_days, holdout_days)
    experiment = tracking.experiment_name(settings, city)
    client = MlflowClient()
    train_proc = _run_step(
        "process_data", {"city": city, "start": w.train_start, "end": w.train_end}, experiment
    )
    hold_proc = _run_step(
        "process_data", {"city": city, "start": w.holdout_start, "end": w.holdout_end}, experiment
    )
    features = _tag(client, train_proc, "features_dir")
    holdout = _tag(client, hold_proc, "features_dir")
    train_run = _run_step(
        "train",
        {"city": city, "features": features, "process_run_id": train_proc, **train_overrides},
        experiment,
    )
    version = _tag(client, train_run, "registered_version")
    model_uri = f"models:/{tracking.model_name(settings, city)}/{version}"
    eval_run = _run_step(
        "evaluate", {"city": city, "model_uri": model_uri, "features": holdout}, experiment
    )
    return {
        "process_run_id": train_proc,
        "holdout_process_run_id": hold_proc,
        "train_run_id": train_run,
        "evaluate_run_id": eval_run,
        "model_uri": model_uri,
        "features": features,
        "holdout_features": holdout,
    }
