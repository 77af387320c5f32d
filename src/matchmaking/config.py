"""Runtime settings and YAML-backed parameter models.

Settings come from the environment (prefix ``MATCHMAKING_``) and are built at the entry point
(the CLI command, the app's lifespan), never at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError
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
