"""The gate's pure check and its thresholds file (no tracking server).

The gate decides on logged evidence: the logged AUC, the off-policy estimate of first-offer
acceptance with its interval, the support behind it and the paired difference against
Production (docs/promotion.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from matchmaking.errors import ConfigError
from matchmaking.registry.gate import (
    DIFFERENCE_METRICS,
    GATE_METRICS,
    Canary,
    canary_checks,
    check,
    load_thresholds,
)

OK_CANARY = Canary(loaded=True, finite=True, in_range=True, latency_p99_ms=1.0)
PROD = {
    "auc": 0.80,
    "acceptance": 0.85,
    "acceptance_ci_low": 0.82,
    "acceptance_ci_high": 0.88,
    "supported": 600.0,
    "support": 0.45,
    "ess": 250.0,
    "bookings": 1333.0,
    "first_choice_eta_p50_min": 4.0,
}
SAME = {
    "acceptance": 0.0,
    "acceptance_ci_low": -0.004,
    "acceptance_ci_high": 0.004,
    "bookings": 1333,
}


def test_packaged_thresholds_load_and_reject_unknown_keys(tmp_path: Path) -> None:
    gate = load_thresholds()
    assert 0 < gate.min_auc < 1 and gate.max_latency_p99_ms > 0
    assert gate.estimator == "dr" and gate.min_supported_bookings >= 1
    assert set(PROD) == set(GATE_METRICS) and set(SAME) == set(DIFFERENCE_METRICS)
    bad = tmp_path / "gate.yaml"
    bad.write_text(
        "min_auc: 0.6\nmin_acceptance: 0.3\nmax_acceptance_drop: 0.01\n"
        "max_eta_p50_increase_min: 0.2\nmin_supported_bookings: 100\nmin_ess: 50\n"
        "max_latency_p99_ms: 5\nmin_aucc: 0.7\n"
    )
    with pytest.raises(ConfigError, match=r"gate\.yaml"):
        load_thresholds(bad)


def test_replay_era_keys_are_refused_not_ignored(tmp_path: Path) -> None:
    """A gate.yaml still naming the replay's completion check is an error naming the key:
    completion cannot be estimated from the log (docs/promotion.md)."""
    old = tmp_path / "gate.yaml"
    old.write_text(
        "min_auc: 0.6\nmin_acceptance: 0.3\nmax_acceptance_drop: 0.01\n"
        "max_eta_p50_increase_min: 0.2\nmin_supported_bookings: 100\nmin_ess: 50\n"
        "max_latency_p99_ms: 5\nmax_completion_drop: 0.01\n"
    )
    with pytest.raises(ConfigError, match="max_completion_drop"):
        load_thresholds(old)


def test_floors_only_without_production() -> None:
    gate = load_thresholds()
    passed = check(gate, PROD, None, OK_CANARY)
    assert passed.passed, passed.reasons
    assert set(passed.checks) == {"floor_auc", "floor_acceptance", "support", "canary", "latency"}
    low = check(gate, {**PROD, "auc": 0.5}, None, OK_CANARY)
    assert not low.passed and low.checks["floor_auc"] is False
    assert "no_regression_acceptance" not in low.checks
    under = check(gate, {**PROD, "acceptance": gate.min_acceptance - 0.01}, None, OK_CANARY)
    assert [k for k, ok in under.checks.items() if not ok] == ["floor_acceptance"]
    assert "estimated first-offer acceptance (dr)" in under.reason


@pytest.mark.parametrize(
    "change",
    [{"supported": 40.0}, {"ess": 3.0}, {"supported": float("nan"), "ess": float("nan")}],
)
def test_too_little_support_is_refused_as_too_uncertain_even_without_production(
    change: dict[str, float],
) -> None:
    gate = load_thresholds()
    thin = {**PROD, **change}
    alone = check(gate, thin, None, OK_CANARY)
    assert not alone.passed and [k for k, ok in alone.checks.items() if not ok] == ["support"]
    assert alone.reason.startswith("too uncertain: the candidate's")
    assert f">= {gate.min_supported_bookings}" in alone.reason
    against = check(gate, PROD, thin, OK_CANARY, SAME)
    assert [k for k, ok in against.checks.items() if not ok] == ["support_production"]
    assert "too uncertain: Production's" in against.reason


def test_non_inferiority_is_decided_on_the_lower_end_of_the_paired_interval() -> None:
    gate = load_thresholds()
    margin = gate.max_acceptance_drop
    # A better point estimate whose interval still reaches below -margin: refused.
    wide = {"acceptance": 0.005, "acceptance_ci_low": -margin - 0.001, "acceptance_ci_high": 0.02}
    refused = check(gate, PROD, PROD, OK_CANARY, {**SAME, **wide})
    assert [k for k, ok in refused.checks.items() if not ok] == ["no_regression_acceptance"]
    assert "paired difference +0.0050" in refused.reason and "cannot rule out" in refused.reason
    # An interval wholly below -margin: refused as worse, not as unsure.
    worse = {"acceptance": -0.05, "acceptance_ci_low": -0.07, "acceptance_ci_high": -margin - 0.01}
    clearly = check(gate, PROD, PROD, OK_CANARY, {**SAME, **worse})
    assert "worse beyond the margin" in clearly.reason
    # A slightly worse point estimate whose interval stays above -margin: passes.
    close = {"acceptance": -margin / 4, "acceptance_ci_low": -margin + 0.001}
    assert check(gate, PROD, PROD, OK_CANARY, {**SAME, **close}).passed
    # Only the paired difference decides, never the two separate estimates.
    assert check(gate, {**PROD, "acceptance": 0.60}, PROD, OK_CANARY, SAME).passed


@pytest.mark.parametrize(
    "difference",
    [None, {**SAME, "acceptance_ci_low": float("nan")}],
    ids=["no difference", "nan interval"],
)
def test_a_missing_paired_estimate_never_passes(difference: dict[str, float] | None) -> None:
    result = check(load_thresholds(), PROD, PROD, OK_CANARY, difference)
    assert not result.passed and result.checks["no_regression_acceptance"] is False


def test_first_choice_eta_regression_beyond_tolerance_fails() -> None:
    gate = load_thresholds()
    slower = {**PROD, "first_choice_eta_p50_min": 4.0 + gate.max_eta_p50_increase_min + 0.1}
    result = check(gate, slower, PROD, OK_CANARY, SAME)
    assert [k for k, ok in result.checks.items() if not ok] == ["no_regression_eta_p50"]
    within = {**PROD, "first_choice_eta_p50_min": 4.0 + gate.max_eta_p50_increase_min / 2}
    assert check(gate, within, PROD, OK_CANARY, SAME).passed


def test_canary_and_latency() -> None:
    gate = load_thresholds()
    bad_scores = Canary(loaded=True, finite=False, in_range=False, latency_p99_ms=1.0)
    assert check(gate, PROD, PROD, bad_scores, SAME).checks["canary"] is False
    slow = Canary(True, True, True, latency_p99_ms=gate.max_latency_p99_ms * 2)
    assert check(gate, PROD, PROD, slow, SAME).reasons == [
        f"p99 single-booking scoring latency {slow.latency_p99_ms:.1f} ms > "
        f"{gate.max_latency_p99_ms} ms"
    ]


@pytest.mark.parametrize(
    ("finite", "in_range", "says"),
    [(False, True, "finite=False, in range=True"), (True, False, "finite=True, in range=False")],
)
def test_canary_finite_and_in_range_each_fail_the_gate_alone(
    finite: bool, in_range: bool, says: str
) -> None:
    canary = Canary(loaded=True, finite=finite, in_range=in_range, latency_p99_ms=1.0)
    result = check(load_thresholds(), PROD, PROD, canary, SAME)
    assert not result.passed and [k for k, ok in result.checks.items() if not ok] == ["canary"]
    assert result.reasons == [f"canary request failed: {says}"]


@pytest.mark.parametrize(
    ("scores", "probabilistic", "expected"),
    [
        ([0.1, 0.9, 0.5], True, (True, True)),
        ([0.1, float("nan"), 0.5], True, (False, True)),  # NaN: not finite, not out of range
        ([0.1, 1.5, 0.5], True, (True, False)),  # a probability above 1, all finite
        ([-0.2, 0.4, 0.5], True, (True, False)),
        ([0.1, float("inf"), 0.5], True, (False, False)),
        ([-3.0, 7.5, 0.5], False, (True, True)),  # ranking scores: any finite value
        ([0.1, 0.9], True, (False, True)),  # a score missing for one of the three rows
    ],
)
def test_canary_checks_judge_finite_and_range_apart(
    scores: list[float], probabilistic: bool, expected: tuple[bool, bool]
) -> None:
    assert canary_checks(np.array(scores), 3, probabilistic) == expected
