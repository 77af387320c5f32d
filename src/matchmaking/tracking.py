"""MLflow wiring shared by every step: where runs go, lineage datasets, reproducibility tags."""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset

from matchmaking.config import Settings, refuse_mlflow_default_store
from matchmaking.errors import MatchmakingError, TrackingError
from matchmaking.registry import conventions

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
    record_owner_on_new_runs()
    return uri


def experiment_name(settings: Settings, city: str) -> str:
    return f"{settings.experiment_prefix}-{city}"


def model_name(settings: Settings, city: str) -> str:
    """The registered model of a city: ``<prefix>-<city>`` (``registry.conventions``)."""
    return conventions.model_name(settings.model_name_prefix, city)


def use_experiment(settings: Settings, city: str) -> str:
    """Create (if needed) and activate the city's experiment; returns its id.

    With a local (SQLite) store, artifacts go under ``<data_dir>/mlartifacts``; with a tracking
    server, the server decides (``--serve-artifacts``).
    """
    if os.environ.get("MLFLOW_RUN_ID"):
        # Launched by MLflow Projects: the run already exists in the experiment it chose.
        exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID", "")
        if exp_id:
            reap_interrupted_runs(exp_id)
        return exp_id
    name = experiment_name(settings, city)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        location = None
        if not settings.resolved_tracking_uri().startswith(("http://", "https://")):
            location = (settings.artifacts_dir.resolve() / name).as_uri()
        try:
            exp_id = mlflow.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException as exc:
            # Another step of the city created it meanwhile (the per-day tasks run at once).
            exp = mlflow.get_experiment_by_name(name)
            if exp is None:
                raise exc from None
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    reap_interrupted_runs(exp_id)
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
    tags.update(owner_tags())
    tags.update({k: str(v) for k, v in extra.items() if v is not None})
    return tags


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- an unreachable tracking server, and the runs it leaves behind -----------------------------

#: Run tags naming the process that owns a run, so that a run it left RUNNING can be found.
OWNER_HOST_TAG = "owner_host"
OWNER_PID_TAG = "owner_pid"
#: Set on a run marked FAILED because its process ended without closing it.
INTERRUPTED_TAG = "interrupted"


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a failed HTTP exchange with the tracking server."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, requests.exceptions.RequestException):
            return True
        if isinstance(seen, mlflow.exceptions.MlflowException) and str(seen).startswith(
            "API request to"
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def tracking_error(exc: mlflow.exceptions.MlflowException, settings: Settings) -> MatchmakingError:
    """The package error for an MLflow failure nothing else handled (exit code 5)."""
    uri = settings.resolved_tracking_uri()
    if not unreachable(exc):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return TrackingError(f"the tracking store {uri} refused the request: {first}")
    text = str(exc)
    reason = (
        "connection refused"
        if "refused" in text.lower()
        else "timed out"
        if "timeout" in text.lower() or "timed out" in text.lower()
        else "no answer"
    )
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.tracking_retries))
    timeout = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", str(settings.tracking_timeout))
    return TrackingError(
        f"the tracking server {uri} is unreachable ({reason}; gave up after {retries} retries, "
        f"timeout {timeout} s per request; MATCHMAKING_TRACKING_RETRIES and "
        "MATCHMAKING_TRACKING_TIMEOUT wait longer). If this command had a run open, the next "
        "process, train or evaluate of the city against this server marks it FAILED. Start the "
        "server (or fix the tracking URI) and rerun."
    )


def owner_tags() -> dict[str, str]:
    """Which process runs this: ``owner_host`` and ``owner_pid``."""
    return {OWNER_HOST_TAG: socket.gethostname(), OWNER_PID_TAG: str(os.getpid())}


def record_owner_on_new_runs() -> None:
    """Give every run this process creates the ``owner_tags`` at creation, atomically, through
    MLflow's ``MLFLOW_RUN_CONTEXT`` (tags as JSON, merged with any already there): a run is
    never RUNNING without saying whose it is, however early its process dies."""
    import json

    from mlflow.environment_variables import MLFLOW_RUN_CONTEXT

    try:
        context = json.loads(MLFLOW_RUN_CONTEXT.get() or "{}")
    except ValueError:
        context = {}
    if not isinstance(context, dict):
        context = {}
    os.environ[MLFLOW_RUN_CONTEXT.name] = json.dumps({**context, **owner_tags()})


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_interrupted_runs(experiment_id: str) -> list[str]:
    """Mark FAILED the runs of this experiment left RUNNING by a process of this host that
    no longer exists (killed with SIGKILL, or cut off from the tracking server); returns their
    ids. Each gets the tag ``interrupted`` saying why. Runs owned by other hosts are left alone:
    whether their process still lives cannot be told from here.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    host = socket.gethostname()
    current = os.environ.get("MLFLOW_RUN_ID")
    runs = client.search_runs(
        [experiment_id],
        f"attributes.status = 'RUNNING' and tags.{OWNER_HOST_TAG} = '{host}'",
        max_results=200,
    )
    reaped = []
    for run in runs:
        pid = run.data.tags.get(OWNER_PID_TAG, "")
        if run.info.run_id == current or not pid.isdigit():
            continue
        if int(pid) == os.getpid() or _process_alive(int(pid)):
            continue
        now = datetime.now(UTC).isoformat(timespec="seconds")
        client.set_tag(
            run.info.run_id,
            INTERRUPTED_TAG,
            f"process {pid} on {host} ended without closing this run (killed, or the tracking "
            f"server was unreachable); marked FAILED at {now} by process {os.getpid()}",
        )
        client.set_terminated(run.info.run_id, "FAILED")
        logger.warning(
            "run %s was left RUNNING by process %s, which is gone: marked it FAILED",
            run.info.run_id,
            pid,
        )
        reaped.append(run.info.run_id)
    return reaped
