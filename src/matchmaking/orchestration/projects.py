"""Run the MLflow Projects of ``mlproject/`` from a task: what a data scientist runs, as is.

Each step is ``mlflow.projects.run(..., env_manager="local")`` in the city's experiment. The
step process gets the lake location (``MATCHMAKING_LAKE_URI``, and ``MATCHMAKING_DATA_DIR`` for
a local lake), the tracking URI and the interpreter to run (``MATCHMAKING_PYTHON``, set by
``run_project``) through its environment; nothing else is shared between tasks but URIs and
MLflow run ids.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from matchmaking import tracking
from matchmaking.config import Settings
from matchmaking.orchestration.config import PipelineConfig
from matchmaking.pipeline import exported, run_project, run_tags

logger = logging.getLogger(__name__)


@contextmanager
def step_environment(cfg: PipelineConfig) -> Iterator[Settings]:
    """Settings for the configured lake, exported to the step processes while inside.

    The previous environment is restored on exit (``dag.test()`` runs every task in one
    process). Both locations are absolute (a relative ``lake_uri`` is resolved against the
    worker's working directory, once, here).
    """
    data_dir = cfg.data_dir()
    updates = {"MATCHMAKING_LAKE_URI": cfg.lake_location()}
    if data_dir is not None:
        updates["MATCHMAKING_DATA_DIR"] = str(data_dir)
    with exported(updates):
        settings = Settings()
        tracking.configure(settings)
        yield settings


def city_experiment(settings: Settings, city: str) -> str:
    """The city's experiment id (created with the library's artifact location if new)."""
    return tracking.use_experiment(settings, city)


__all__ = ["city_experiment", "run_project", "run_tags", "step_environment"]
