"""Settings of the scoring service (environment prefix ``MATCHMAKING_SERVE_``).

Built once in ``create_app`` (or by ``serving.main.run``), never at import time. Where the
models come from follows the rest of the platform: ``MATCHMAKING_SERVE_TRACKING_URI`` if set,
else ``matchmaking.config.Settings().resolved_tracking_uri()`` (``MATCHMAKING_TRACKING_URI``,
then ``MLFLOW_TRACKING_URI``, then the demo's SQLite store under ``MATCHMAKING_DATA_DIR``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from matchmaking.config import Settings
from matchmaking.lake import storage
from matchmaking.lake.storage import Location

#: In the shard map, the pool that owns every city no other pool names.
ANY_CITY = "*"


def check_shard_map(shards: dict[str, list[str]], shard: str | None, hot: list[str]) -> None:
    """Refuse a shard map that cannot route (``ValueError`` saying what to fix)."""
    if not shards:
        if shard is not None:
            raise ValueError(
                f"MATCHMAKING_SERVE_SHARD is {shard!r} but MATCHMAKING_SERVE_SHARDS is empty: "
                "give the shard map (pool -> cities) to every pool"
            )
        return
    if shard is None or shard not in shards:
        raise ValueError(
            f"MATCHMAKING_SERVE_SHARD must name this pool, one of {sorted(shards)} (got {shard!r})"
        )
    owner: dict[str, str] = {}
    catch_all = [pool for pool, cities in shards.items() if ANY_CITY in cities]
    if len(catch_all) > 1:
        raise ValueError(f"pools {catch_all} all claim '{ANY_CITY}'; at most one pool may")
    for pool, cities in shards.items():
        for city in cities:
            if city != ANY_CITY and owner.setdefault(city, pool) != pool:
                raise ValueError(f"city {city!r} is in pools {owner[city]!r} and {pool!r}")
    mine = set(shards[shard])
    foreign = [c for c in hot if c not in mine and (ANY_CITY not in mine or c in owner)]
    if foreign:
        raise ValueError(
            f"hot cities {foreign} are not in pool {shard!r}'s shard {sorted(mine)}: list "
            "only the pool's own cities in MATCHMAKING_SERVE_HOT_CITIES"
        )


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
    max_models: int = Field(
        default=64,
        ge=1,
        description="Registered models kept in memory (LRU; the hot cities' are never evicted). "
        "Must hold the hot set: a larger hot set is refused at startup.",
    )
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
    compile_workers: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Worker processes compiling forests in the background, at most at once.",
    )
    compile_cache_dir: Path | None = Field(
        default=None, description="Where compiled forests are cached by version (default: none)."
    )
    shards: dict[str, list[str]] = Field(
        default_factory=dict,
        description="The shard map, JSON: pool name -> the cities it owns ('*': every city no "
        "other pool names). Empty: one pool serves every city.",
    )
    shard: str | None = Field(
        default=None,
        description="This pool's name in the shard map; a city another pool owns is refused "
        "with 421 naming that pool.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Secret of the MLflow registry webhook: when set, signed deliveries to "
        "POST /v1/registry/webhook start a registry poll at once (polling stays the fallback).",
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
    lake_uri: str | None = Field(
        default=None,
        description="Lake the decision and outcome logs go to (<lake>/serving/...); default: "
        "MATCHMAKING_LAKE_URI when set. No lake: nothing is logged and /v1/outcomes answers 503.",
    )
    decision_log: bool = Field(
        default=True,
        description="Log decisions and outcomes to the lake (only when a lake is configured).",
    )
    decision_queue_size: int = Field(
        default=10_000,
        ge=1,
        description="Answers (and outcome batches) waiting for the log writer, at most; beyond "
        "it answers are still given but their log records are dropped (counted in /metrics).",
    )
    decision_flush_seconds: float = Field(
        default=5.0, gt=0, description="Seconds between two flushes of the log writer."
    )
    max_outcomes: int = Field(default=1000, ge=1, description="Outcomes per /v1/outcomes, at most.")
    outcome_dedup_keys: int = Field(
        default=200_000,
        ge=1,
        description="Recent outcome keys remembered per process to answer repeats without "
        "storing them again (readers deduplicate across replicas and restarts).",
    )
    exploration: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        description="Plackett-Luce exploration temperature per city, 'jakarta=0.5,bangkok=0.3' "
        "(absent or 0: the greedy order); the registered-model tag "
        "serving.exploration_temperature overrides it.",
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

    @field_validator("exploration", mode="before")
    @classmethod
    def _split_exploration(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        out: dict[str, float] = {}
        for item in value.split(","):
            if not item.strip():
                continue
            city, sep, temp = item.partition("=")
            try:
                out[city.strip()] = float(temp) if sep else float("nan")
            except ValueError:
                out[city.strip()] = float("nan")
            if not sep or not out[city.strip()] >= 0:
                raise ValueError(
                    f"MATCHMAKING_SERVE_EXPLORATION item {item.strip()!r} is not 'city=T' with "
                    "a temperature T >= 0, e.g. 'jakarta=0.5,bangkok=0.3'"
                )
        return out

    @field_validator("exploration", mode="after")
    @classmethod
    def _check_exploration(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {c: t for c, t in value.items() if not t >= 0 or t == float("inf")}
        if bad:
            raise ValueError(f"exploration temperatures must be finite and >= 0: {bad}")
        return value

    @model_validator(mode="after")
    def _fits(self) -> ServeSettings:
        hot = list(dict.fromkeys(self.hot_cities))
        if len(hot) > self.max_models:
            raise ValueError(
                f"MATCHMAKING_SERVE_HOT_CITIES names {len(hot)} cities but "
                f"MATCHMAKING_SERVE_MAX_MODELS is {self.max_models}: a hot set larger than the "
                "model cache would be loaded and evicted forever and the pod would never be "
                f"ready; raise MAX_MODELS to at least {len(hot)} or split the cities over "
                "shards (docs/serving.md#shards)"
            )
        check_shard_map(self.shards, self.shard, hot)
        return self

    def resolved_tracking_uri(self) -> str:
        """The registry URI in force (this setting, else the platform's resolution)."""
        return self.tracking_uri or Settings().resolved_tracking_uri()

    def resolved_lake(self) -> Location | None:
        """Where the serving logs go: this setting, else ``MATCHMAKING_LAKE_URI``; None when
        neither is set or logging is off."""
        if not self.decision_log:
            return None
        if self.lake_uri:
            return storage.location(self.lake_uri)
        platform = Settings()
        return platform.lake_dir if platform.lake_uri else None

    def resolved_model_name_prefix(self) -> str:
        """Registered models are ``<prefix>-<city>`` (this setting, else the platform's)."""
        return self.model_name_prefix or Settings().model_name_prefix
