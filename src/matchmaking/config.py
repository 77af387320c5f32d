"""Runtime settings and YAML-backed parameter models.

Settings come from the environment (prefix ``MATCHMAKING_``) and are built at the entry point
(the CLI command, the app's lifespan), never at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from matchmaking import storage
from matchmaking.errors import ConfigError, field_problems
from matchmaking.storage import Location

DEFAULT_DATA_DIR = Path("data")


class Settings(BaseSettings):
    """Where data and experiments live.

    The embedded defaults keep everything under ``./data``: the data lake in ``data/lake`` and
    MLflow in a SQLite store ``data/mlflow.db`` with artifacts in ``data/mlartifacts``. Point
    ``MATCHMAKING_LAKE_URI`` elsewhere (another path, ``file://`` or ``s3://bucket/lake``; see
    ``matchmaking.storage``) and ``MATCHMAKING_TRACKING_URI`` (or ``MLFLOW_TRACKING_URI``) at a
    tracking server to share runs.
    """

    model_config = SettingsConfigDict(env_prefix="MATCHMAKING_", extra="ignore")

    data_dir: Path = DEFAULT_DATA_DIR
    lake_uri: str | None = None
    tracking_uri: str | None = None
    # How long a command waits for an unreachable tracking server before it exits with code 5
    # (mapped onto MLflow's MLFLOW_HTTP_REQUEST_* variables: ``mlflow_http_environment``).
    tracking_retries: Annotated[int, Field(ge=0, le=10)] = 3
    tracking_timeout: Annotated[int, Field(ge=1)] = 30
    experiment_prefix: str = "matchmaking"
    model_name_prefix: str = "matchmaking"
    log_level: str = "INFO"

    @property
    def lake_dir(self) -> Location:
        """``MATCHMAKING_LAKE_URI`` (a ``Path`` when local), else ``<data_dir>/lake``."""
        if self.lake_uri:
            return storage.location(self.lake_uri)
        return self.data_dir / "lake"

    @property
    def raw_dir(self) -> Location:
        return storage.join(self.lake_dir, "raw")

    @property
    def truth_dir(self) -> Location:
        return storage.join(self.lake_dir, "truth")

    @property
    def features_dir(self) -> Location:
        return storage.join(self.lake_dir, "features")

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "mlartifacts"

    def resolved_tracking_uri(self) -> str:
        """The tracking URI in force: explicit setting, then MLFLOW_TRACKING_URI, then SQLite."""
        import os

        if self.tracking_uri:
            return self.tracking_uri
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env:
            return env
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

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
