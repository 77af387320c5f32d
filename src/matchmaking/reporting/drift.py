"""Feature drift: the population stability index (PSI) of each model feature.

The reference is the Production model's training window (the feature dataset behind its
``features_uri`` tag); each later day is compared with it. Bins are quantiles of the reference
(a missing value is a bin of its own), proportions are floored at ``EPSILON`` so an empty bin
costs a bounded amount, and

    PSI = sum over bins of (actual - expected) * ln(actual / expected).

Rule of thumb: below 0.1 stable, 0.1-0.25 moderate, above 0.25 a real shift. The alert level
and the bins are configuration (``config/drift.yaml``, ``DriftConfig``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from matchmaking.config import Settings, load_yaml_model
from matchmaking.lake import datasets
from matchmaking.lake.datasets import read_dataset
from matchmaking.lake.storage import Location, LocationLike
from matchmaking.schema import FEATURE_NAMES

logger = logging.getLogger(__name__)

DEFAULT_DRIFT_FILE = Path(__file__).resolve().parent.parent / "config" / "drift.yaml"
EPSILON = 1e-4
METRIC_PREFIX = "drift.psi."


class DriftConfig(BaseModel):
    """How drift is measured and when a feature is flagged."""

    model_config = ConfigDict(extra="forbid")

    measure: Literal["psi"] = "psi"
    bins: int = Field(default=10, ge=2, le=100)
    alert_psi: float = Field(default=0.2, gt=0)
    min_rows: int = Field(default=200, ge=1)
    exclude: list[str] = Field(default_factory=lambda: ["day_of_week"])

    @field_validator("exclude")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(FEATURE_NAMES))
        if unknown:
            raise ValueError(f"unknown feature(s) {unknown}; the features are {FEATURE_NAMES}")
        return names

    @property
    def features(self) -> tuple[str, ...]:
        """The features compared, in contract order."""
        return tuple(f for f in FEATURE_NAMES if f not in self.exclude)


def load_drift_config(path: Path | None = None) -> DriftConfig:
    """The drift configuration from ``path`` (default: the packaged ``config/drift.yaml``)."""
    return load_yaml_model(path or DEFAULT_DRIFT_FILE, DriftConfig)


# -- the measure ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureBins:
    """Quantile edges of one reference feature and the reference's share in each bin."""

    edges: npt.NDArray[np.float64]  # inner edges; bin i holds values in [edges[i-1], edges[i])
    expected: npt.NDArray[np.float64]  # len(edges) + 2 shares: the bins, then missing values

    def shares(self, values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        missing = ~np.isfinite(values)
        idx = np.searchsorted(self.edges, values[~missing], side="right")
        counts = np.bincount(idx, minlength=len(self.edges) + 1).astype(np.float64)
        counts = np.append(counts, float(missing.sum()))
        return counts / max(len(values), 1)


def feature_bins(values: npt.NDArray[np.float64], bins: int) -> FeatureBins:
    """Bins of ``values`` at its quantiles (ties collapse: a discrete feature gets fewer)."""
    finite = values[np.isfinite(values)]
    if len(finite):
        qs = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1])
        edges = np.unique(qs)
    else:
        edges = np.array([], dtype=np.float64)
    empty = FeatureBins(edges, np.array([], dtype=np.float64))
    return FeatureBins(edges, empty.shares(values))


def psi(expected: npt.NDArray[np.float64], actual: npt.NDArray[np.float64]) -> float:
    """The population stability index of two share vectors over the same bins."""
    e = np.maximum(expected, EPSILON)
    a = np.maximum(actual, EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class Reference:
    """The reference distribution of each compared feature (a model's training window)."""

    rows: int
    bins: dict[str, FeatureBins]

    def compare(self, frame: pd.DataFrame) -> dict[str, float]:
        """PSI of each feature of ``frame`` against this reference."""
        return {
            name: psi(b.expected, b.shares(frame[name].to_numpy(dtype=np.float64)))
            for name, b in self.bins.items()
        }


def reference(frame: pd.DataFrame, config: DriftConfig) -> Reference:
    """The reference distributions of ``frame`` (the training window's feature rows)."""
    bins = {
        name: feature_bins(frame[name].to_numpy(dtype=np.float64), config.bins)
        for name in config.features
    }
    return Reference(len(frame), bins)


def over_alert(values: dict[str, float], config: DriftConfig) -> list[str]:
    """The features whose PSI reaches the alert level, highest first."""
    hits = [(v, k) for k, v in values.items() if np.isfinite(v) and v >= config.alert_psi]
    return [k for _, k in sorted(hits, reverse=True)]


def drift_metrics(ref: Reference, frame: pd.DataFrame, config: DriftConfig) -> dict[str, float]:
    """What ``evaluate`` logs: ``drift.psi.<feature>``, ``drift.max_psi`` and
    ``drift.features_over_alert`` for ``frame`` (the holdout) against ``ref``."""
    values = ref.compare(frame)
    out = {f"{METRIC_PREFIX}{k}": v for k, v in values.items()}
    out["drift.max_psi"] = max(values.values(), default=0.0)
    out["drift.features_over_alert"] = float(len(over_alert(values, config)))
    out["drift.alert_psi"] = config.alert_psi
    return out


# -- per day, from the lake -------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """A published feature dataset of a city and its window."""

    location: Location
    start: date
    end: date


def published_datasets(settings: Settings, city: str) -> list[Published]:
    """Every published feature dataset of ``city`` with its window, read from the dataset's
    folder ``<start>_<end>/<digest>`` (the lake finds them: ``lake.datasets``)."""
    out = []
    for location, _ in datasets.published_datasets(settings.features_dir, city):
        window = PurePosixPath(str(location)).parent.name
        start, _, end = window.partition("_")
        try:
            out.append(Published(location, date.fromisoformat(start), date.fromisoformat(end)))
        except ValueError:
            logger.warning(
                "ignoring feature dataset %s: window %r is not START_END", location, window
            )
    return sorted(out, key=lambda p: (p.end, p.start, str(p.location)))


@dataclass(frozen=True)
class DayDrift:
    """One day against the reference: its rows, each feature's PSI, the flagged features."""

    day: date
    rows: int
    psi: dict[str, float] = field(default_factory=dict)
    flagged: list[str] = field(default_factory=list)

    @property
    def scored(self) -> bool:
        return bool(self.psi)


def _days(frame: pd.DataFrame) -> npt.NDArray[np.datetime64]:
    return np.asarray(pd.to_datetime(frame["day"]).to_numpy().astype("datetime64[D]"))


def daily_drift(
    ref: Reference,
    datasets: list[Published],
    after: date,
    config: DriftConfig,
    since: date | None = None,
) -> list[DayDrift]:
    """PSI of every day later than ``after`` (and not before ``since``) found in ``datasets``.

    Each day is read from one dataset only: the newest window that holds it. Datasets are read
    one at a time, newest first, and only when they hold a day not seen yet.
    """
    first = max(after.toordinal() + 1, since.toordinal() if since else 0)
    seen: dict[date, DayDrift] = {}
    for ds in sorted(datasets, key=lambda p: (p.end, p.start), reverse=True):
        wanted = {
            date.fromordinal(o)
            for o in range(max(ds.start.toordinal(), first), ds.end.toordinal() + 1)
        } - seen.keys()
        if not wanted:
            continue
        frame, _ = read_dataset(ds.location)
        days = _days(frame)
        for day in sorted(wanted):
            part = frame.loc[days == np.datetime64(day)]
            if len(part) < config.min_rows:
                seen[day] = DayDrift(day, len(part))
                continue
            values = ref.compare(part)
            seen[day] = DayDrift(day, len(part), values, over_alert(values, config))
    return [seen[d] for d in sorted(seen)]


def reference_from_dataset(location: LocationLike, config: DriftConfig) -> Reference:
    """The reference of a published dataset (a model's training window)."""
    frame, _ = read_dataset(location)
    return reference(frame, config)


# -- for ``evaluate`` -------------------------------------------------------------------------


def training_features_uri(model_uri: str) -> str | None:
    """The training dataset behind a ``models:/name/N``, ``models:/name@alias`` or ``runs:/``
    URI (the version's or the training run's ``features_uri`` tag); None when unknown."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        if model_uri.startswith("models:/"):
            name, _, rest = model_uri.removeprefix("models:/").partition("/")
            if "@" in name:
                name, _, alias = name.partition("@")
                mv = client.get_model_version_by_alias(name, alias)
            else:
                mv = client.get_model_version(name, rest.split("/", 1)[0])
            return mv.tags.get("features_uri")
        if model_uri.startswith("runs:/"):
            run_id = model_uri.removeprefix("runs:/").split("/", 1)[0]
            return client.get_run(run_id).data.tags.get("features_uri")
    except MlflowException as exc:
        logger.warning("cannot resolve the training data of %s: %s", model_uri, exc)
    return None


def evaluation_drift(
    model_uri: str, holdout: pd.DataFrame, config: DriftConfig | None = None
) -> dict[str, float]:
    """Drift metrics of the holdout against the model's training window; empty (with a
    warning) when that window is unknown or no longer readable here."""
    from matchmaking.errors import MatchmakingError

    uri = training_features_uri(model_uri)
    if not uri:
        logger.warning("%s has no features_uri tag: drift not measured", model_uri)
        return {}
    cfg = config or load_drift_config()
    try:
        ref = reference_from_dataset(uri, cfg)
    except (MatchmakingError, OSError) as exc:
        logger.warning("cannot read the training window %s: drift not measured (%s)", uri, exc)
        return {}
    return drift_metrics(ref, holdout, cfg)
