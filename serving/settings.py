"""Settings of the scoring service (environment prefix ``MATCHMAKING_SERVE_``).

Built once in ``create_app`` (or by ``serving.main.run``), never at import time. Where the
models come from follows the rest of the platform: ``MATCHMAKING_SERVE_TRACKING_URI`` if set,
else ``matchmaking.config.Settings().resolved_tracking_uri()`` (``MATCHMAKING_TRACKING_URI``,
then ``MLFLOW_TRACKING_URI``, then the demo's SQLite store under ``MATCHMAKING_DATA_DIR``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from matchmaking.config import Settings


class ServeSettings(BaseSettings):
    """Every knob of the service; each maps to ``MATCHMAKING_SERVE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="MATCHMAKING_SERVE_", extra="ignore")

    tracking_uri: str | None = Field(
        default=None, description="Registry to read models from (default: platform setting)."
    )
    model_name_prefix: str | None = Field(
        default=None,
        description="Models are '<prefix>-<city>' (default: MATCHMAKING_MODEL_NAME_PREFIX).",
    )
    hot_cities: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Cities loaded at startup, comma-separated."
    )
    max_models: int = Field(default=64, ge=1, description="City models kept in memory (LRU).")
    poll_interval_s: float = Field(
        default=30.0, gt=0, description="Seconds between registry checks for new versions."
    )
    registry_timeout_s: float = Field(
        default=5.0, gt=0, description="HTTP timeout of one registry call."
    )
    registry_retries: int = Field(
        default=1, ge=0, description="Retries of one registry call before it counts as an error."
    )
    max_candidates: int = Field(default=200, ge=1, description="Candidates per booking, at most.")
    max_bookings: int = Field(default=50, ge=1, description="Bookings per /v1/match, at most.")
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="Request body limit.")
    max_km_from_city: float = Field(
        default=100.0, gt=0, description="Coordinates farther than this from the city are invalid."
    )
    auth_token: SecretStr | None = Field(
        default=None, description="When set, /v1/* require 'Authorization: Bearer <token>'."
    )
    fallback_nearest_eta: bool = Field(
        default=False,
        description="Rank by ETA (flagged fallback=true) when a city has no servable model.",
    )
    compile_forests: bool = Field(
        default=True,
        description="Compile each forest with lleaves (when installed) off the request path.",
    )
    compile_cache_dir: Path | None = Field(
        default=None, description="Where compiled forests are cached by version (default: none)."
    )
    access_log: bool = Field(default=True, description="Structured access log lines.")
    access_log_sample: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Share of fast successful requests that get an access line; errors (status "
        ">= 400) and requests slower than slow_request_ms always do. At thousands of requests "
        "a second per pod, one line each costs a fifth of the request time and floods the "
        "log pipeline; /metrics counts every request.",
    )
    slow_request_ms: float = Field(
        default=50.0, ge=0.0, description="Requests slower than this are always logged."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = "INFO"

    @field_validator("hot_cities", mode="before")
    @classmethod
    def _split_cities(cls, value: object) -> object:
        if isinstance(value, str):
            return [c.strip() for c in value.split(",") if c.strip()]
        return value

    def resolved_tracking_uri(self) -> str:
        """The registry URI in force (this setting, else the platform's resolution)."""
        return self.tracking_uri or Settings().resolved_tracking_uri()

    def resolved_model_name_prefix(self) -> str:
        """Registered models are ``<prefix>-<city>`` (this setting, else the platform's)."""
        return self.model_name_prefix or Settings().model_name_prefix
