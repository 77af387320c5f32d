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

from matchmaking import tracking
from matchmaking.config import Settings
from matchmaking.orchestration.config import PipelineConfig
from matchmaking.pipeline import run_project, run_tags

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


__all__ = ["city_experiment", "run_project", "run_tags", "step_environment"]
