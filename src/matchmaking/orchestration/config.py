"""The daily retrain's configuration: cities, schedule, windows, lake URI, promotion.

``config/pipeline.yaml`` (or the file named by ``MATCHMAKING_PIPELINE_CONFIG``) loads into
``PipelineConfig`` (``extra="forbid"``). The DAG files read it at parse time, so this module
imports nothing heavy: no MLflow, no pandas, no Airflow, not even the market catalogue's models
(city ids are checked against the ids the catalogue files declare, read with YAML's C event
parser; only an unknown id loads the full catalogue, for its hints).
"""

from __future__ import annotations

import functools
import os
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from matchmaking.config import load_yaml_model
from matchmaking.errors import ConfigError
from matchmaking.lake.storage import as_uri, is_remote, local_path

CONFIG_ENV_VAR = "MATCHMAKING_PIPELINE_CONFIG"
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "pipeline.yaml"
_CITY_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_QUEUE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
# The catalogue's files, as matchmaking.markets finds them (a test keeps the two in step).
_MARKETS_FILE = DEFAULT_CONFIG.with_name("markets.yaml")
_MARKETS_ENV = "MATCHMAKING_MARKETS"
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class WindowConfig(BaseModel):
    """How a run's logical date maps to the training and holdout windows."""

    model_config = ConfigDict(extra="forbid")

    train_days: Annotated[int, Field(ge=2)] = 28
    holdout_days: Annotated[int, Field(ge=1)] = 7
    lag_days: Annotated[int, Field(ge=0)] = 1


class PromotionConfig(BaseModel):
    """Whether ``matchmaking_train`` runs the promotion gate (off: CI promotes)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    cities: list[str] | None = None

    def applies_to(self, city: str) -> bool:
        """Whether the gate runs for ``city``."""
        return self.enabled and (self.cities is None or city in self.cities)


class CountryModelsConfig(BaseModel):
    """Whether ``matchmaking_train`` trains country models, pooled over the configured cities of
    a country (docs/pooled.md), and from how many cities on."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    min_cities: Annotated[int, Field(ge=1)] = 2


class PipelineConfig(BaseModel):
    """Everything the DAGs need that is not code."""

    model_config = ConfigDict(extra="forbid")

    cities: list[str] = Field(min_length=1)
    lake_uri: str = "data/lake"
    schedule: str | None = "0 2 * * *"
    start_date: date = date(2026, 8, 1)
    windows: WindowConfig = WindowConfig()
    max_bad_share: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    train_params: dict[str, str] = {}
    evaluate_seed: int = 7
    promotion: PromotionConfig = PromotionConfig()
    country_models: CountryModelsConfig = CountryModelsConfig()
    retries: Annotated[int, Field(ge=0)] = 2
    retry_delay_minutes: Annotated[float, Field(ge=0.0)] = 5.0
    max_parallel_cities: Annotated[int, Field(ge=1)] = 16
    # Days of one city per task instance of the data DAG's per-day steps: 1 maps one
    # instance per missing (city, day); more cuts the task-instance count (each instance
    # costs a task process start) at the price of a broken day failing its chunk's task.
    days_per_task: Annotated[int, Field(ge=1)] = 1
    default_queue: str = "default"
    queues: dict[str, str] = {}
    pod_templates: dict[str, str] = {}

    @field_validator("cities")
    @classmethod
    def _unique_ids(cls, cities: list[str]) -> list[str]:
        bad = [c for c in cities if not _CITY_ID.match(c)]
        if bad:
            raise ValueError(f"city ids are lowercase slugs like 'ho-chi-minh-city'; got {bad}")
        dupes = sorted({c for c in cities if cities.count(c) > 1})
        if dupes:
            raise ValueError(f"cities listed twice: {dupes}")
        if _catalogue_ids(os.environ.get(_MARKETS_ENV, "")).issuperset(cities):
            return cities
        from matchmaking.markets import MARKETS_ENV, catalogue

        known = catalogue()  # loads and validates every file: the hints, or the file's error
        unknown = [c for c in cities if c not in known]
        if unknown:
            hints = "; ".join(
                f"{c!r} (closest: {', '.join(known.closest(c)) or 'none'})" for c in unknown
            )
            raise ValueError(
                f"cities not in the market catalogue: {hints}. List the ids with `matchmaking "
                f"world cities`; a new market goes in a file named by {MARKETS_ENV} "
                "(docs/markets.md)"
            )
        return cities

    @field_validator("default_queue")
    @classmethod
    def _queue_name(cls, queue: str) -> str:
        if not _QUEUE.match(queue):
            raise ValueError(f"queue names are like 'heavy' or 'mega-cities'; got {queue!r}")
        return queue

    @field_validator("queues")
    @classmethod
    def _queue_names(cls, queues: dict[str, str]) -> dict[str, str]:
        bad = sorted(q for q in set(queues.values()) if not _QUEUE.match(q))
        if bad:
            raise ValueError(f"queue names are like 'heavy' or 'mega-cities'; got {bad}")
        return queues

    @model_validator(mode="after")
    def _queued_cities_are_configured(self) -> PipelineConfig:
        stray = [c for c in self.queues if c not in self.cities]
        if stray:
            raise ValueError(f"queues names cities that are not under cities: {stray}")
        return self

    @field_validator("train_params", mode="before")
    @classmethod
    def _as_strings(cls, value: object) -> object:
        if isinstance(value, dict):
            return {str(k): "" if v is None else str(v) for k, v in value.items()}
        return value

    def queue_of(self, city: str) -> str:
        """The executor queue of ``city``'s tasks (``queues``, else ``default_queue``)."""
        return self.queues.get(city, self.default_queue)

    def cities_by_queue(self) -> dict[str, list[str]]:
        """Configured cities grouped by queue, in configured order; the default queue first.

        The DAGs map one group of tasks per queue over its cities: a queue is a task
        attribute, fixed when the DAG is parsed, so it cannot vary between map indexes.
        """
        groups: dict[str, list[str]] = {self.default_queue: []}
        for city in self.cities:
            groups.setdefault(self.queue_of(city), []).append(city)
        return {q: cities for q, cities in groups.items() if cities}

    def executor_config(self, queue: str) -> dict[str, str]:
        """``executor_config`` of a queue's tasks: its KubernetesExecutor pod template, if any
        (``pod_templates``: queue -> a pod template file on the scheduler); other executors
        ignore it."""
        template = self.pod_templates.get(queue)
        return {"pod_template_file": template} if template else {}

    def task_suffix(self, queue: str) -> str:
        """Task id suffix of a queue's tasks: none on the default queue, ``_<queue>`` else."""
        return "" if queue == self.default_queue else "_" + queue.replace("-", "_")

    def plan_key(self, step: str, queue: str) -> str:
        """The key of the data DAG's plan listing the (city, day) pairs of ``step``
        (``summarise`` or ``process_day``) on ``queue``: the step's task id."""
        return f"{step}{self.task_suffix(queue)}"

    @property
    def retry_delay(self) -> timedelta:
        return timedelta(minutes=self.retry_delay_minutes)

    def dag_defaults(self, owner: str, max_active_runs: int = 1) -> dict[str, object]:
        """The DAG arguments both DAGs share: start, no catch-up, retries, and one run at a
        time unless told otherwise (the training DAG runs one per city partition)."""
        return {
            "start_date": datetime.combine(self.start_date, datetime.min.time(), tzinfo=UTC),
            "catchup": False,
            "max_active_runs": max_active_runs,
            "default_args": {
                "owner": owner,
                "retries": self.retries,
                "retry_delay": self.retry_delay,
            },
        }

    def lake_location(self) -> str:
        """``MATCHMAKING_LAKE_URI`` for the steps: an absolute path, or the object-storage URI."""
        return lake_location(self.lake_uri)

    def lake_path(self) -> Path:
        """The lake as an absolute local path (``file://`` URI or plain path).

        Raises:
            ConfigError: the lake is on object storage.
        """
        return lake_path(self.lake_uri)

    def data_dir(self) -> Path | None:
        """``MATCHMAKING_DATA_DIR`` for the steps (MLflow's local fallback store): the local
        lake's parent directory; None for a lake on object storage (the environment's own)."""
        return None if is_remote(self.lake_uri) else self.lake_path().parent

    def lake_as_uri(self) -> str:
        """The lake as a URI: ``file:///...`` for local lakes."""
        return as_uri(self.lake_location())


def _ids_in(text: str) -> set[str]:
    """The ``id`` of every row under the top-level ``markets`` key, from parser events only.

    Raises:
        yaml.YAMLError: not YAML.
    """
    ids: set[str] = set()
    # One frame per open collection: [is_mapping, expecting_a_key, last_key]
    stack: list[list[object]] = []
    in_markets = False
    for event in yaml.parse(text, Loader=_YAML_LOADER):
        if isinstance(event, yaml.ScalarEvent):
            frame = stack[-1] if stack else None
            if frame is not None and frame[0]:
                if frame[1]:
                    frame[1], frame[2] = False, event.value
                    continue
                if len(stack) == 3 and in_markets and frame[2] == "id":
                    ids.add(event.value)
                frame[1] = True
        elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(stack) == 1 and stack[0][0]:
                in_markets = stack[0][2] == "markets"
            stack.append([isinstance(event, yaml.MappingStartEvent), True, None])
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            stack.pop()
            if stack and stack[-1][0]:
                stack[-1][1] = True
    return ids


@functools.lru_cache(maxsize=8)
def _catalogue_ids(markets_env: str) -> frozenset[str]:
    """The market ids the catalogue files declare (empty when a file cannot be read: the
    caller then loads the catalogue, which says what is wrong with it)."""
    extra = [Path(p).expanduser() for p in markets_env.split(os.pathsep) if p.strip()]
    paths = [_MARKETS_FILE, *extra]
    ids: set[str] = set()
    try:
        for path in paths:
            ids |= _ids_in(path.read_text())
    except (OSError, yaml.YAMLError):
        return frozenset()
    return frozenset(ids)


def lake_path(uri: str) -> Path:
    """A ``file://`` URI or a path as an absolute local path (relative: to the cwd).

    Raises:
        ConfigError: an object-storage URI (use ``lake_location``).
    """
    if is_remote(uri):
        raise ConfigError(f"{uri!r} is on object storage, not a local path")
    return local_path(uri).absolute()


def lake_location(uri: str) -> str:
    """A lake or dataset URI as the steps take it: an absolute local path, or the URI itself
    for object storage (``s3://bucket/lake``; any fsspec filesystem installed)."""
    if is_remote(uri):
        return uri.rstrip("/")
    return str(lake_path(uri))


def config_path() -> Path:
    """The configuration file in force: ``$MATCHMAKING_PIPELINE_CONFIG`` or the packaged one."""
    configured = os.environ.get(CONFIG_ENV_VAR)
    return Path(configured) if configured else DEFAULT_CONFIG


def load_pipeline_config(path: Path | None = None) -> PipelineConfig:
    """Load and validate the pipeline configuration.

    Raises:
        ConfigError: naming the file when it is missing, not YAML or invalid.
    """
    return load_yaml_model(path or config_path(), PipelineConfig)


FEATURES_ASSET_NAME = "matchmaking_features"


def features_asset_uri(cfg: PipelineConfig) -> str:
    """The URI of the features asset: the lake's ``features`` layer."""
    return f"{cfg.lake_as_uri()}/features"


def run_day(logical_date: datetime | None, run_after: datetime) -> date:
    """The day a DAG run stands for: its logical date, else (manual, no date) when it ran."""
    return (logical_date or run_after).date()
