"""Runtime settings and YAML-backed parameter models.

Settings come from the environment (prefix ``MATCHMAKING_``) and are built at the entry point
(the CLI command, the app's lifespan), never at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, TypeVar
from urllib.parse import unquote

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from matchmaking.errors import ConfigError, field_problems
from matchmaking.lake import storage
from matchmaking.lake.storage import Location

DEFAULT_DATA_DIR = Path("data")


class Settings(BaseSettings):
    """Where data and experiments live.

    The embedded defaults keep everything under ``./data``: the data lake in ``data/lake`` and
    MLflow in a SQLite store ``data/mlflow.db`` with artifacts in ``data/mlartifacts``. Point
    ``MATCHMAKING_LAKE_URI`` elsewhere (another path, ``file://`` or ``s3://bucket/lake``; see
    ``matchmaking.lake.storage``) and ``MATCHMAKING_TRACKING_URI`` (or ``MLFLOW_TRACKING_URI``) at a
    tracking server to share runs.
    """

    model_config = SettingsConfigDict(env_prefix="MATCHMAKING_", extra="ignore")

    data_dir: Path = Field(default=DEFAULT_DATA_DIR, validate_default=True)
    lake_uri: str | None = None
    tracking_uri: str | None = None
    # How long a command waits for an unreachable tracking server before it exits with code 5
    # (mapped onto MLflow's MLFLOW_HTTP_REQUEST_* variables: ``mlflow_http_environment``).
    tracking_retries: Annotated[int, Field(ge=0, le=10)] = 3
    tracking_timeout: Annotated[int, Field(ge=1)] = 30
    experiment_prefix: str = "matchmaking"
    model_name_prefix: str = "matchmaking"
    log_level: str = "INFO"
    promotion_locks_uri: str | None = None
    promotion_lease_s: float = Field(default=900.0, gt=0)
    # The process step's out-of-core engine (docs/scale.md): DuckDB's memory limit (beyond it
    # DuckDB spills to a scratch directory under ``process_temp_dir``, default the system's
    # temporary directory), its threads (default: the cores the process may run on), the rows
    # validated at once and the rows per feature batch (cut at booking boundaries).
    process_memory_limit: str = "2GB"
    process_temp_dir: Path | None = None
    process_threads: Annotated[int, Field(ge=1)] | None = None
    process_bucket_rows: Annotated[int, Field(ge=1000)] = 1_000_000
    process_batch_rows: Annotated[int, Field(ge=100)] = 250_000

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        """Relative to the working directory of the process building the settings, once:
        what is logged and handed to other processes is absolute."""
        return value.absolute()

    @property
    def lake_dir(self) -> Location:
        """``MATCHMAKING_LAKE_URI`` (made absolute when local), else ``<data_dir>/lake``."""
        if self.lake_uri:
            return Location.of(self.lake_uri).absolute()
        return Location.of(self.data_dir / "lake")

    @property
    def raw_dir(self) -> Location:
        return storage.join(self.lake_dir, "raw")

    @property
    def features_dir(self) -> Location:
        return storage.join(self.lake_dir, "features")

    @property
    def promotion_locks_dir(self) -> Location:
        """``MATCHMAKING_PROMOTION_LOCKS_URI``, else ``<lake>/_locks/promotion``: where the
        promotion lock's lease files live (every promoter of a model must see the same one)."""
        if self.promotion_locks_uri:
            return storage.location(self.promotion_locks_uri)
        return storage.join(self.lake_dir, "_locks", "promotion")

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "mlartifacts"

    def resolved_tracking_uri(self) -> str:
        """The tracking URI in force: explicit setting, then MLFLOW_TRACKING_URI, then SQLite.

        A relative SQLite path is made absolute here, so that the step processes, which
        MLflow Projects starts in another directory, open the same file.
        """
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"
        return absolute_sqlite_uri(uri)

    def step_environment(self) -> dict[str, str]:
        """The locations a step process needs, absolute (resolved against this process's
        working directory, once): ``MATCHMAKING_DATA_DIR`` and a local ``MATCHMAKING_LAKE_URI``.
        """
        env = {"MATCHMAKING_DATA_DIR": str(self.data_dir)}
        if self.lake_uri:
            env["MATCHMAKING_LAKE_URI"] = str(self.lake_dir)
        return env

    def mlflow_http_environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """MLflow's HTTP client variables that bound how long a command waits for an
        unreachable tracking server (MLflow's defaults retry for minutes).

        ``tracking_retries`` and ``tracking_timeout`` become ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``
        and ``MLFLOW_HTTP_REQUEST_TIMEOUT``; an MLflow variable already in ``environ`` wins
        unless the ``MATCHMAKING_`` setting was given as well. Between retries urllib3 waits
        0 s, 2 s, 4 s, ... (``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` 1, ``..._BACKOFF_JITTER`` 0.5).
        The CLI puts these in its environment, so the MLflow Projects steps it starts get them.
        """
        out = {}
        for var, field in (
            ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "tracking_retries"),
            ("MLFLOW_HTTP_REQUEST_TIMEOUT", "tracking_timeout"),
        ):
            if field in self.model_fields_set or var not in environ:
                out[var] = str(getattr(self, field))
        for var, value in (
            ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
            ("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0.5"),
        ):
            if var not in environ:
                out[var] = value
        return out


def absolute_sqlite_uri(uri: str) -> str:
    """``sqlite:///relative.db`` -> ``sqlite:////abs/relative.db``; other URIs unchanged."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri.startswith(prefix + "/") or uri == prefix + ":memory:":
        return uri
    return f"{prefix}{Path(uri.removeprefix(prefix)).resolve()}"


def refuse_mlflow_default_store(uri: str) -> None:
    """Refuse, in a step started by ``mlflow run`` without ``MLFLOW_TRACKING_URI``, MLflow's
    built-in default store (``./mlflow.db`` at the repository root) instead of silently
    filling a second store next to the project's ``data/mlflow.db``.

    ``mlflow run`` creates the run before any project code runs, in
    ``sqlite:///<its working directory>/mlflow.db`` (MLflow 3), and MLflow has no project-level
    setting for it: the run can only be pointed at the project's store by the environment.
    Steps run from the repository root (``mlproject/step.sh``), so that file is
    ``./mlflow.db`` here.

    Raises:
        ConfigError: the run lives in that default store.
    """
    if not os.environ.get("MLFLOW_RUN_ID"):
        return
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return
    if Path(unquote(uri.removeprefix(prefix))).resolve() != Path("mlflow.db").resolve():
        return
    raise ConfigError(
        f"`mlflow run` started this run in MLflow's built-in default store {uri} because "
        "MLFLOW_TRACKING_URI is not set; the project's store is data/mlflow.db. Run "
        "`export MLFLOW_TRACKING_URI=sqlite:///$PWD/data/mlflow.db` (or your tracking server) "
        "from the repository root and rerun; ./mlflow.db can be deleted"
    )


M = TypeVar("M", bound=BaseModel)


def load_yaml_model(path: Path, model: type[M], overrides: dict[str, object] | None = None) -> M:
    """Load a YAML file into a pydantic model, applying ``overrides`` on top.

    Raises:
        ConfigError: naming the file when it is missing, not YAML, or fails validation.
    """
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = [f"config file {path}: {key}: {problem}" for key, problem in field_problems(exc)]
        raise ConfigError("\n".join(lines)) from None
