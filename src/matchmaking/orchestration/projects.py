"""Run the MLflow Projects of ``mlproject/`` from a task: what a data scientist runs, as is.

Each step is ``mlflow.projects.run(..., env_manager="local")`` in the city's experiment. The
step process gets the lake location (``MATCHMAKING_LAKE_URI``, and ``MATCHMAKING_DATA_DIR`` for
a local lake) and the tracking URI through its environment; nothing else is shared between
tasks but URIs and MLflow run ids.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from matchmaking import tracking
from matchmaking.config import Settings
from matchmaking.errors import TrackingError
from matchmaking.orchestration.config import PipelineConfig
from matchmaking.pipeline import PROJECT_DIR

logger = logging.getLogger(__name__)


@contextmanager
def step_environment(cfg: PipelineConfig) -> Iterator[Settings]:
    """Settings for the configured lake, exported to the step processes while inside.

    The previous environment is restored on exit (``dag.test()`` runs every task in one
    process). The interpreter's ``bin`` goes first on ``PATH`` so that the ``matchmaking``
    command of the MLproject resolves to this installation.
    """
    data_dir = cfg.data_dir()
    updates = {
        "MATCHMAKING_LAKE_URI": cfg.lake_location(),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    if data_dir is not None:
        updates["MATCHMAKING_DATA_DIR"] = str(data_dir)
    saved = {key: os.environ.get(key) for key in updates}
    os.environ.update(updates)
    try:
        settings = Settings()
        tracking.configure(settings)
        yield settings
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def city_experiment(settings: Settings, city: str) -> str:
    """The city's experiment id (created with the library's artifact location if new)."""
    return tracking.use_experiment(settings, city)


def run_project(
    entry_point: str, params: dict[str, object], experiment_id: str, run_name: str
) -> str:
    """Run one MLproject entry point synchronously; returns its MLflow run id.

    Raises:
        mlflow.exceptions.ExecutionException: the step failed (its run is marked FAILED).
    """
    logger.info("mlflow run %s -e %s %s", PROJECT_DIR, entry_point, params)
    submitted = mlflow.projects.run(
        str(PROJECT_DIR),
        entry_point=entry_point,
        parameters={k: str(v) for k, v in params.items()},
        env_manager="local",
        experiment_id=experiment_id,
        run_name=run_name,
        synchronous=True,
    )
    run_id = str(submitted.run_id)
    logger.info("%s finished: run %s", entry_point, run_id)
    return run_id


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
