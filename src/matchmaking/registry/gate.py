"""The promotion gate: thresholds (``config/gate.yaml``) and the pure check.

The gate only compares numbers; measuring them (holdout replay, canary, latency) is
``matchmaking.registry.measure``'s job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from matchmaking.config import load_yaml_model

DEFAULT_GATE_FILE = Path(__file__).resolve().parent.parent / "config" / "gate.yaml"

#: The gate's metrics and the evaluation metric each one is (``matchmaking evaluate``'s names):
#: the model's AUC on the logged labels and its replay under the simulator's truth.
GATE_METRICS = {
    "auc": "logged.model.auc",
    "acceptance": "sim.replay.model.acceptance",
    "completion": "sim.replay.model.completion",
    "pickup_eta_p50_min": "sim.replay.model.pickup_eta_p50_min",
}


class GateThresholds(BaseModel):
    """Floors, tolerances against Production, canary and latency bounds."""

    model_config = ConfigDict(extra="forbid")

    min_auc: float = Field(ge=0, le=1)
    min_acceptance: float = Field(ge=0, le=1)
    max_acceptance_drop: float = Field(ge=0)
    max_completion_drop: float = Field(ge=0)
    max_eta_p50_increase_min: float = Field(ge=0)
    replay_seed: int = 7
    canary_bookings: int = Field(3, ge=1)
    latency_bookings: int = Field(200, ge=1)
    max_latency_p99_ms: float = Field(gt=0)


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


def check(
    thresholds: GateThresholds,
    candidate: dict[str, float],
    production: dict[str, float] | None,
    canary: Canary,
) -> GateResult:
    """Apply floors, no-regression tolerances (when Production exists), canary and latency.

    Args:
        candidate: the candidate's model-policy metrics on the holdout (``GATE_METRICS``).
        production: the same metrics of the current Production version on the same holdout and
            seed, or None when the city has no Production version (floors only).
    """
    result = GateResult(passed=True)

    def require(name: str, ok: bool, why: str) -> None:
        result.checks[name] = ok
        if not ok:
            result.passed = False
            result.reasons.append(why)

    auc, acc = candidate["auc"], candidate["acceptance"]
    require(
        "floor_auc",
        math.isfinite(auc) and auc >= thresholds.min_auc,
        f"AUC {auc:.4f} below the floor {thresholds.min_auc}",
    )
    require(
        "floor_acceptance",
        math.isfinite(acc) and acc >= thresholds.min_acceptance,
        f"replay acceptance {acc:.4f} below the floor {thresholds.min_acceptance}",
    )
    if production is not None:
        drop = production["acceptance"] - acc
        require(
            "no_regression_acceptance",
            drop <= thresholds.max_acceptance_drop,
            f"acceptance {acc:.4f} vs Production {production['acceptance']:.4f} "
            f"(drop {drop:.4f} > {thresholds.max_acceptance_drop})",
        )
        comp = candidate["completion"]
        cdrop = production["completion"] - comp
        require(
            "no_regression_completion",
            cdrop <= thresholds.max_completion_drop,
            f"completion {comp:.4f} vs Production {production['completion']:.4f} "
            f"(drop {cdrop:.4f} > {thresholds.max_completion_drop})",
        )
        eta = candidate["pickup_eta_p50_min"]
        rise = eta - production["pickup_eta_p50_min"]
        require(
            "no_regression_eta_p50",
            rise <= thresholds.max_eta_p50_increase_min,
            f"p50 pickup ETA {eta:.2f} min vs Production {production['pickup_eta_p50_min']:.2f} "
            f"(+{rise:.2f} > {thresholds.max_eta_p50_increase_min})",
        )
    require(
        "canary",
        canary.loaded and canary.finite and canary.in_range,
        "canary request failed: "
        + (canary.error or f"finite={canary.finite}, in range={canary.in_range}"),
    )
    require(
        "latency",
        canary.loaded and canary.latency_p99_ms <= thresholds.max_latency_p99_ms,
        f"p99 single-booking scoring latency {canary.latency_p99_ms:.1f} ms > "
        f"{thresholds.max_latency_p99_ms} ms",
    )
    return result
