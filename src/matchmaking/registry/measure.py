"""Measuring a version for the gate: its evaluation metrics on the holdout (``GATE_METRICS``),
a canary request and single-booking scoring latency."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from matchmaking.errors import ModelNotFoundError
from matchmaking.evaluation.logged import logged_metrics
from matchmaking.evaluation.simulator import compare, table_metrics
from matchmaking.registry.conventions import SCORE_PROBABILITY
from matchmaking.registry.gate import GATE_METRICS, Canary, GateThresholds, canary_checks
from matchmaking.schema import FEATURE_NAMES, GROUP_COLUMN
from matchmaking.scorer import load_scorer

logger = logging.getLogger(__name__)


@dataclass
class Measured:
    """What measuring one version on the holdout showed."""

    version: str
    metrics: dict[str, float]
    canary: Canary


def measure(
    name: str, mv: ModelVersion, rows: pd.DataFrame, thresholds: GateThresholds
) -> Measured:
    """The gate's metrics on the holdout (the logged AUC; the replay's acceptance, completion
    and ETA, simulator diagnostics: ``rows`` carry the truth until the gate decides on logged
    evidence), a canary request and single-booking latency."""
    uri = f"models:/{name}/{mv.version}"
    try:
        booster = load_scorer(uri, mv.tags, version=str(mv.version))
    except (MlflowException, OSError, ValueError, ModelNotFoundError) as exc:
        canary = Canary(False, False, False, math.inf, f"{uri} does not load: {exc}")
        nan = float("nan")
        return Measured(str(mv.version), dict.fromkeys(GATE_METRICS, nan), canary)
    x = rows[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    scores = np.asarray(booster.predict(x), dtype=np.float64)
    probabilistic = booster.score_kind == SCORE_PROBABILITY
    logged = logged_metrics(rows, {"model": scores}, probabilistic)
    measured = {f"logged.{p}.{k}": float(v) for p, r in logged.iterrows() for k, v in r.items()}
    measured |= table_metrics(compare(rows, scores, probabilistic, thresholds.replay_seed))
    metrics = {k: measured.get(name, float("nan")) for k, name in GATE_METRICS.items()}
    return Measured(str(mv.version), metrics, _canary(booster, rows, probabilistic, thresholds))


def _canary(
    booster: object, rows: pd.DataFrame, probabilistic: bool, thresholds: GateThresholds
) -> Canary:
    groups = pd.factorize(rows[GROUP_COLUMN])[0]
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    bounds = list(zip(starts, np.r_[starts[1:], len(groups)], strict=True))
    features = rows[list(FEATURE_NAMES)].astype("float64")
    canary = features.iloc[: bounds[min(thresholds.canary_bookings, len(bounds)) - 1][1]]
    scores = np.asarray(booster.predict(canary), dtype=np.float64)  # type: ignore[attr-defined]
    finite, in_range = canary_checks(scores, len(canary), probabilistic)
    x = features.to_numpy()
    timings = []
    for lo, hi in bounds[: thresholds.latency_bookings]:
        started = time.perf_counter()
        booster.predict(x[lo:hi])  # type: ignore[attr-defined]
        timings.append((time.perf_counter() - started) * 1000)
    return Canary(True, finite, in_range, float(np.percentile(timings, 99)))
