"""The chained pipeline: process (train window) -> process (holdout) -> train -> evaluate.

``run_chain`` drives the MLflow Projects in ``mlproject/`` (each step its own run, passing run
ids and dataset URIs along), exactly as ``mlflow run mlproject -e main`` does. Locations are
resolved once, here, against the working directory the pipeline was started from, and reach
the steps as absolute paths; the steps run with this process's interpreter.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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
# Read by mlproject/step.sh: the interpreter that runs the step's `python -m matchmaking`.
PYTHON_ENV_VAR = "MATCHMAKING_PYTHON"


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


def run_project(
    entry_point: str,
    params: dict[str, object],
    experiment_id: str | None = None,
    run_name: str | None = None,
    experiment_name: str | None = None,
) -> str:
    """Run one MLproject entry point synchronously (``--env-manager local``); its run id.

    Raises:
        mlflow.exceptions.ExecutionException: the step failed (its run is marked FAILED).
    """
    logger.info("mlflow run %s -e %s %s", PROJECT_DIR, entry_point, params)
    with exported({PYTHON_ENV_VAR: sys.executable}):  # not whatever `python` PATH finds
        submitted = mlflow.projects.run(
            str(PROJECT_DIR),
            entry_point=entry_point,
            parameters={k: str(v) for k, v in params.items()},
            env_manager="local",
            experiment_id=experiment_id,
            experiment_name=experiment_name,
            run_name=run_name,
            synchronous=True,
        )
    run_id = str(submitted.run_id)
    logger.info("%s finished: run %s", entry_point, run_id)
    return run_id


@contextmanager
def exported(updates: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the step processes started inside; restore them after.

    MLflow Projects hands its children a copy of ``os.environ`` (there is no ``env=``), and
    ``dag.test()`` runs every task in one process, hence the restore.
    """
    saved = {key: os.environ.get(key) for key in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_tags(run_id: str, *keys: str) -> dict[str, str]:
    """The given tags of a finished run.

    Raises:
        TrackingError: a tag is missing (the step did not finish its work).
    """
    tags = MlflowClient().get_run(run_id).data.tags
    missing = [k for k in keys if not tags.get(k)]
    if missing:
        raise TrackingError(f"run {run_id} has no tag(s) {missing}; did the step finish?")
    return {k: tags[k] for k in keys}


def run_chain(
    settings: Settings,
    city: str,
    end: date,
    train_days: int,
    holdout_days: int,
    train_overrides: dict[str, str],
) -> dict[str, str]:
    """Run every step as its own MLflow Projects run; returns the ids and URIs that flowed."""
    with exported(settings.step_environment()):
        return _chain(settings, city, end, train_days, holdout_days, train_overrides)


def _chain(
    settings: Settings,
    city: str,
    end: date,
    train_days: int,
    holdout_days: int,
    train_overrides: dict[str, str],
) -> dict[str, str]:
    tracking.configure(settings)
    w = windows(end, train_days, holdout_days)
    exp = tracking.experiment_name(settings, city)
    train_proc = run_project(
        "process_data", {"city": city, "start": w.train_start, "end": w.train_end}, None, None, exp
    )
    hold_proc = run_project(
        "process_data",
        {"city": city, "start": w.holdout_start, "end": w.holdout_end},
        None,
        None,
        exp,
    )
    features = run_tags(train_proc, "features_dir")["features_dir"]
    holdout = run_tags(hold_proc, "features_dir")["features_dir"]
    train_run = run_project(
        "train",
        {"city": city, "features": features, "process_run_id": train_proc, **train_overrides},
        None,
        None,
        exp,
    )
    version = run_tags(train_run, "registered_version")["registered_version"]
    model_uri = f"models:/{tracking.model_name(settings, city)}/{version}"
    eval_run = run_project(
        "evaluate", {"city": city, "model_uri": model_uri, "features": holdout}, None, None, exp
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
