"""The promotion gate: thresholds (``config/gate.yaml``) and the pure check.

The gate decides on logged evidence only: the logged-data AUC of the candidate, off-policy
estimates of first-offer acceptance (``evaluation.offpolicy``) of the candidate and of the
current Production version on the same logged holdout with the same estimator, their paired
per-booking difference with its interval, how much of the log supports each estimate, and the
logged ETA of each model's first choice. Nothing here reads the simulator's truth or its
``sim.*`` metrics. Measuring the numbers is ``matchmaking.registry.measure``'s job; the rules
are documented in docs/promotion.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from matchmaking.config import load_yaml_model
from matchmaking.evaluation.logged import DEFAULT_DR_CLIP
from matchmaking.experiments.report import OnlineThresholds

DEFAULT_GATE_FILE = Path(__file__).resolve().parent.parent / "config" / "gate.yaml"

#: What the gate reads of each version (``measure.Measured.metrics``):
#: ``auc`` on the holdout's offered rows and logged labels; ``acceptance`` (with
#: ``acceptance_ci_low`` / ``acceptance_ci_high``), the off-policy estimate of first-offer
#: acceptance; ``supported`` (bookings whose logged first offer is the model's first choice),
#: ``support`` (their share), ``ess`` (effective sample size of the weights) and ``bookings``
#: (bookings in the log); ``first_choice_eta_p50_min``, the p50 logged ETA of the model's first
#: choice over the holdout's bookings.
GATE_METRICS = (
    "auc",
    "acceptance",
    "acceptance_ci_low",
    "acceptance_ci_high",
    "supported",
    "support",
    "ess",
    "bookings",
    "first_choice_eta_p50_min",
)
#: What the gate reads of the paired difference candidate - Production (``measure.paired``).
DIFFERENCE_METRICS = ("acceptance", "acceptance_ci_low", "acceptance_ci_high", "bookings")


class GateThresholds(BaseModel):
    """Floors, non-inferiority margins against Production, how certain an estimate must be,
    canary and latency bounds (docs/promotion.md)."""

    model_config = ConfigDict(extra="forbid")

    min_auc: float = Field(ge=0, le=1)
    min_acceptance: float = Field(ge=0, le=1)
    max_acceptance_drop: float = Field(ge=0)
    max_eta_p50_increase_min: float = Field(ge=0)
    estimator: Literal["dr", "ips"] = "dr"
    confidence: float = Field(0.95, gt=0, lt=1)
    clip: float | None = Field(None, gt=0)
    dr_clip: float | None = Field(DEFAULT_DR_CLIP, gt=0)
    min_supported_bookings: int = Field(ge=1)
    min_ess: float = Field(ge=1)
    seed: int = 7
    canary_bookings: int = Field(3, ge=1)
    latency_bookings: int = Field(200, ge=1)
    max_latency_p99_ms: float = Field(gt=0)
    # ``promote --evidence online``: the challenger's live first-offer acceptance against the
    # champion's (``experiments.report``).
    online: OnlineThresholds = OnlineThresholds()


def load_thresholds(path: Path | None = None) -> GateThresholds:
    """Thresholds from ``path`` (default: the packaged ``config/gate.yaml``)."""
    return load_yaml_model(path or DEFAULT_GATE_FILE, GateThresholds)


@dataclass(frozen=True)
class Canary:
    """What scoring a canary request and timing single-booking calls showed."""

    loaded: bool
    finite: bool
    in_range: bool
    latency_p99_ms: float
    error: str = ""


def canary_checks(scores: np.ndarray, rows: int, probabilistic: bool) -> tuple[bool, bool]:
    """``(finite, in_range)`` of a canary's scores, each judged on its own.

    finite: one score per row and none NaN or infinite. in_range: no score below 0 or above 1
    when scores are probabilities (NaN is not counted here: ``finite`` reports it), always true
    for ranking scores.
    """
    finite = bool(scores.size == rows and np.all(np.isfinite(scores)))
    outside = (scores < 0) | (scores > 1)
    in_range = not probabilistic or not bool(np.any(outside))
    return finite, in_range


@dataclass
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "all checks passed"


def _at_least(value: float, floor: float) -> bool:
    """``value >= floor``, false for NaN (a number that could not be measured never passes)."""
    return math.isfinite(value) and value >= floor


def _support_reason(who: str, metrics: Mapping[str, float], t: GateThresholds) -> str:
    return (
        f"too uncertain: {who}'s off-policy estimate rests on {metrics['supported']:.0f} "
        f"supported bookings of {metrics['bookings']:.0f} (ESS {metrics['ess']:.1f}); the gate "
        f"needs >= {t.min_supported_bookings} and ESS >= {t.min_ess}: use a longer holdout"
    )


def check(
    thresholds: GateThresholds,
    candidate: Mapping[str, float],
    production: Mapping[str, float] | None,
    canary: Canary,
    difference: Mapping[str, float] | None = None,
) -> GateResult:
    """Apply floors, support, non-inferiority against Production (when it exists), canary and
    latency; every check is recorded in ``checks`` and every failed one gives a reason.

    Args:
        candidate: the candidate's ``GATE_METRICS`` on the logged holdout.
        production: the same of the current Production version on the same holdout with the
            same estimator, or None when the city has no Production version (floors, support,
            canary and latency only).
        difference: the paired difference candidate - Production (``DIFFERENCE_METRICS``);
            required with ``production``: without it (or with a NaN interval) the
            non-inferiority check fails, it never passes by default.
    """
    t = thresholds
    result = GateResult(passed=True)

    def require(name: str, ok: bool, why: str) -> None:
        result.checks[name] = ok
        if not ok:
            result.passed = False
            result.reasons.append(why)

    auc, acc = candidate["auc"], candidate["acceptance"]
    require("floor_auc", _at_least(auc, t.min_auc), f"AUC {auc:.4f} below the floor {t.min_auc}")
    require(
        "floor_acceptance",
        _at_least(acc, t.min_acceptance),
        f"estimated first-offer acceptance ({t.estimator}) {acc:.4f} below the floor "
        f"{t.min_acceptance}",
    )
    require(
        "support",
        _at_least(candidate["supported"], t.min_supported_bookings)
        and _at_least(candidate["ess"], t.min_ess),
        _support_reason("the candidate", candidate, t),
    )
    if production is not None:
        require(
            "support_production",
            _at_least(production["supported"], t.min_supported_bookings)
            and _at_least(production["ess"], t.min_ess),
            _support_reason("Production", production, t),
        )
        low = difference["acceptance_ci_low"] if difference is not None else math.nan
        diff = difference["acceptance"] if difference is not None else math.nan
        high = difference["acceptance_ci_high"] if difference is not None else math.nan
        require(
            "no_regression_acceptance",
            _at_least(low, -t.max_acceptance_drop),
            "no paired estimate against Production (it could not be scored on the holdout)"
            if difference is None
            else f"first-offer acceptance vs Production: paired difference {diff:+.4f}, "
            f"{t.confidence:.0%} interval [{low:+.4f}, {high:+.4f}] "
            + (
                f"lies below -{t.max_acceptance_drop} (worse beyond the margin)"
                if high < -t.max_acceptance_drop
                else f"reaches below -{t.max_acceptance_drop} (cannot rule out a drop beyond "
                "the margin)"
            ),
        )
        eta = candidate["first_choice_eta_p50_min"]
        rise = eta - production["first_choice_eta_p50_min"]
        require(
            "no_regression_eta_p50",
            math.isfinite(rise) and rise <= t.max_eta_p50_increase_min,
            f"p50 ETA of the first choice {eta:.2f} min vs Production "
            f"{production['first_choice_eta_p50_min']:.2f} "
            f"(+{rise:.2f} > {t.max_eta_p50_increase_min})",
        )
    require(
        "canary",
        canary.loaded and canary.finite and canary.in_range,
        "canary request failed: "
        + (canary.error or f"finite={canary.finite}, in range={canary.in_range}"),
    )
    require(
        "latency",
        canary.loaded and canary.latency_p99_ms <= t.max_latency_p99_ms,
        f"p99 single-booking scoring latency {canary.latency_p99_ms:.1f} ms > "
        f"{t.max_latency_p99_ms} ms",
    )
    return result
