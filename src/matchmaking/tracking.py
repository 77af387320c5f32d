"""MLflow wiring shared by every step: where runs go, lineage datasets, reproducibility tags."""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import subprocess
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset

from matchmaking.config import Settings, refuse_mlflow_default_store

logger = logging.getLogger(__name__)

TRACKED_PACKAGES = (
    "matchmaking",
    "mlflow",
    "lightgbm",
    "numpy",
    "pandas",
    "pyarrow",
    "scikit-learn",
)


def configure(settings: Settings) -> str:
    """Point MLflow at the configured tracking (and registry) store; returns the URI."""
    uri = settings.resolved_tracking_uri()
    refuse_mlflow_default_store(uri)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def experiment_name(settings: Settings, city: str) -> str:
    return f"{settings.experiment_prefix}-{city}"


def model_name(settings: Settings, city: str) -> str:
    """The registered model of a city: ``matchmaking-<city>``."""
    return f"{settings.model_name_prefix}-{city}"


def use_experiment(settings: Settings, city: str) -> str:
    """Create (if needed) and activate the city's experiment; returns its id.

    With a local (SQLite) store, artifacts go under ``<data_dir>/mlartifacts``; with a tracking
    server, the server decides (``--serve-artifacts``).
    """
    import os

    if os.environ.get("MLFLOW_RUN_ID"):
        # Launched by MLflow Projects: the run already exists in the experiment it chose.
        return os.environ.get("MLFLOW_EXPERIMENT_ID", "")
    name = experiment_name(settings, city)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        location = None
        if not settings.resolved_tracking_uri().startswith(("http://", "https://")):
            location = (settings.artifacts_dir.resolve() / name).as_uri()
        exp_id = mlflow.create_experiment(name, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def dataset_source(uri: str) -> DatasetSource:
    """The MLflow dataset source for a lake URI (file://, s3://, ...)."""
    import warnings

    with warnings.catch_warnings():  # local paths match two equivalent source types
        warnings.simplefilter("ignore", UserWarning)
        return resolve_dataset_source(uri)


def lineage_dataset(uri: str, name: str, digest: str) -> MetaDataset:
    """A lineage record (source URI + content digest) for ``mlflow.log_input``."""
    return MetaDataset(source=dataset_source(uri), name=name, digest=digest[:36])  # type: ignore[abstract]


def git_commit() -> str | None:
    """The source version: $MLFLOW_GIT_COMMIT-like env first, then the repo's HEAD."""
    import os

    for var in ("MATCHMAKING_GIT_COMMIT", "CI_COMMIT_SHA"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def reproducibility_tags(**extra: Any) -> dict[str, str]:
    """Tags that let anyone rerun this: git commit, package versions, plus ``extra``."""
    tags: dict[str, str] = {}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    for pkg in TRACKED_PACKAGES:
        try:
            tags[f"version.{pkg}"] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    tags.update({k: str(v) for k, v in extra.items() if v is not None})
    return tags


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
