"""Measuring a version for the gate on a logged holdout: the logged-data AUC, the off-policy
estimate of first-offer acceptance with its interval, support and ESS, the logged ETA of its
first choice, a canary request and single-booking scoring latency; and the paired difference
of two versions measured on the same log.

Everything comes from the holdout feature dataset and its decision log (offers, acceptances,
logged propensities): what a real dispatch system logs. Nothing here reads the simulator's
truth (docs/promotion.md).
"""

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
from matchmaking.evaluation.logged import decision_log, direct_method, logged_metrics
from matchmaking.evaluation.offpolicy import (
    FirstOffers,
    PolicyEstimate,
    estimate,
    first_choice,
    paired_difference,
)
from matchmaking.evaluation.replay import pick_best
from matchmaking.features.context import add_context
from matchmaking.markets import Market
from matchmaking.registry.conventions import SCORE_PROBABILITY
from matchmaking.registry.gate import GATE_METRICS, Canary, GateThresholds, canary_checks
from matchmaking.schema import GROUP_COLUMN
from matchmaking.scorer import load_scorer

logger = logging.getLogger(__name__)


@dataclass
class Measured:
    """What measuring one version on the holdout showed (``metrics``: ``GATE_METRICS``;
    ``estimate``: the off-policy estimate, for pairing; None when the version did not load)."""

    version: str
    metrics: dict[str, float]
    canary: Canary
    estimate: PolicyEstimate | None = None


@dataclass(frozen=True)
class Holdout:
    """The holdout's rows (grouped by booking) and their logged first offers."""

    rows: pd.DataFrame
    log: FirstOffers

    @classmethod
    def of(cls, rows: pd.DataFrame, market: Market | None = None) -> Holdout:
        """The holdout of ``rows`` (with ``market``: its city context columns added, so a
        country model can be measured on it as well as the city's own).

        Raises:
            InputError: the rows carry no decision log (published before propensities were
                logged): process the window again.
            DataQualityError: the decision log cannot support an estimate.
        """
        if market is not None:
            rows = add_context(rows, market)
        return cls(rows, decision_log(rows))


def measure(name: str, mv: ModelVersion, holdout: Holdout, thresholds: GateThresholds) -> Measured:
    """The version's ``GATE_METRICS`` on the logged holdout, a canary request and latency."""
    uri = f"models:/{name}/{mv.version}"
    try:
        booster = load_scorer(uri, mv.tags, version=str(mv.version))
    except (MlflowException, OSError, ValueError, ModelNotFoundError) as exc:
        canary = Canary(False, False, False, math.inf, f"{uri} does not load: {exc}")
        return Measured(str(mv.version), dict.fromkeys(GATE_METRICS, math.nan), canary)
    rows = holdout.rows
    names = list(booster.feature_names)  # a country model's input adds the city context
    missing = [n for n in names if n not in rows.columns]
    if missing:
        canary = Canary(False, False, False, math.inf, f"{uri}: the holdout lacks {missing}")
        return Measured(str(mv.version), dict.fromkeys(GATE_METRICS, math.nan), canary)
    x = rows[names].to_numpy(dtype=np.float64)
    scores = np.asarray(booster.predict(x), dtype=np.float64)
    probabilistic = booster.score_kind == SCORE_PROBABILITY
    auc = float(logged_metrics(rows, {"model": scores}, probabilistic).loc["model", "auc"])
    direct = direct_method(rows, scores, booster.score_kind, seed=thresholds.seed)
    est = estimate(
        holdout.log,
        first_choice(holdout.log, scores),
        direct.q_hat,
        clip=thresholds.clip,
        dr_clip=thresholds.dr_clip,
        level=thresholds.confidence,
    )
    low, high = getattr(est, f"{thresholds.estimator}_ci")
    group = pd.factorize(rows[GROUP_COLUMN])[0].astype(np.int64)
    first_eta = rows["eta_min"].to_numpy(dtype=np.float64)[pick_best(group, scores)]
    metrics = {
        "auc": auc,
        "acceptance": float(getattr(est, thresholds.estimator)),
        "acceptance_ci_low": float(low),
        "acceptance_ci_high": float(high),
        "supported": float(est.supported),
        "support": est.support,
        "ess": est.ess,
        "bookings": float(est.bookings),
        "first_choice_eta_p50_min": float(np.median(first_eta)) if len(first_eta) else math.nan,
    }
    logger.info(
        "%s v%s: AUC %.4f, %s %.4f [%.4f, %.4f], %d of %d bookings supported, ESS %.1f",
        name,
        mv.version,
        auc,
        thresholds.estimator,
        metrics["acceptance"],
        low,
        high,
        est.supported,
        est.bookings,
        est.ess,
    )
    canary = _canary(booster, rows, probabilistic, thresholds)
    return Measured(str(mv.version), metrics, canary, est)


def paired(
    candidate: Measured, production: Measured, thresholds: GateThresholds
) -> dict[str, float] | None:
    """The paired per-booking difference candidate - Production of the gate's estimator, with
    its interval (``gate.DIFFERENCE_METRICS``); None when either version has no estimate."""
    if candidate.estimate is None or production.estimate is None:
        return None
    diff = paired_difference(candidate.estimate, production.estimate)
    low, high = getattr(diff, f"{thresholds.estimator}_ci")
    return {
        "acceptance": float(getattr(diff, thresholds.estimator)),
        "acceptance_ci_low": float(low),
        "acceptance_ci_high": float(high),
        "bookings": float(diff.bookings),
    }


def _canary(
    booster: object, rows: pd.DataFrame, probabilistic: bool, thresholds: GateThresholds
) -> Canary:
    groups = pd.factorize(rows[GROUP_COLUMN])[0]
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    bounds = list(zip(starts, np.r_[starts[1:], len(groups)], strict=True))
    features = rows[list(booster.feature_names)].astype("float64")  # type: ignore[attr-defined]
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
