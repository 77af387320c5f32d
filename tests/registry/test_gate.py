"""The gate's pure check and its thresholds file (no tracking server)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from matchmaking.errors import ConfigError
from matchmaking.registry.gate import Canary, canary_checks, check, load_thresholds

OK_CANARY = Canary(loaded=True, finite=True, in_range=True, latency_p99_ms=1.0)
PROD = {"auc": 0.80, "acceptance": 0.60, "completion": 0.50, "pickup_eta_p50_min": 4.0}


def test_packaged_thresholds_load_and_reject_unknown_keys(tmp_path: Path) -> None:
    gate = load_thresholds()
    assert 0 < gate.min_auc < 1 and gate.max_latency_p99_ms > 0
    bad = tmp_path / "gate.yaml"
    bad.write_text(
        "min_auc: 0.6\nmin_acceptance: 0.3\nmax_acceptance_drop: 0.01\n"
        "max_completion_drop: 0.01\nmax_eta_p50_increase_min: 0.2\n"
        "max_latency_p99_ms: 5\nmin_aucc: 0.7\n"
    )
    with pytest.raises(ConfigError, match=r"gate\.yaml"):
        load_thresholds(bad)


def test_floors_only_without_production() -> None:
    gate = load_thresholds()
    assert check(gate, PROD, None, OK_CANARY).passed
    low = check(gate, {**PROD, "auc": 0.5}, None, OK_CANARY)
    assert not low.passed and low.checks["floor_auc"] is False
    assert "no_regression_acceptance" not in low.checks


@pytest.mark.parametrize(
    ("change", "failed"),
    [
        ({"acceptance": 0.55}, "no_regression_acceptance"),
        ({"completion": 0.45}, "no_regression_completion"),
        ({"pickup_eta_p50_min": 5.0}, "no_regression_eta_p50"),
    ],
)
def test_regressions_beyond_tolerance_fail(change: dict[str, float], failed: str) -> None:
    result = check(load_thresholds(), {**PROD, **change}, PROD, OK_CANARY)
    assert not result.passed and result.checks[failed] is False
    assert [k for k, ok in result.checks.items() if not ok] == [failed]


def test_canary_and_latency() -> None:
    gate = load_thresholds()
    bad_scores = Canary(loaded=True, finite=False, in_range=False, latency_p99_ms=1.0)
    assert check(gate, PROD, PROD, bad_scores).checks["canary"] is False
    slow = Canary(True, True, True, latency_p99_ms=gate.max_latency_p99_ms * 2)
    assert check(gate, PROD, PROD, slow).reasons == [
        f"p99 single-booking scoring latency {slow.latency_p99_ms:.1f} ms > "
        f"{gate.max_latency_p99_ms} ms"
    ]
    within = {**PROD, "acceptance": PROD["acceptance"] - gate.max_acceptance_drop / 2}
    assert check(gate, within, PROD, OK_CANARY).passed


@pytest.mark.parametrize(
    ("finite", "in_range", "says"),
    [(False, True, "finite=False, in range=True"), (True, False, "finite=True, in range=False")],
)
def test_canary_finite_and_in_range_each_fail_the_gate_alone(
    finite: bool, in_range: bool, says: str
) -> None:
    canary = Canary(loaded=True, finite=finite, in_range=in_range, latency_p99_ms=1.0)
    result = check(load_thresholds(), PROD, PROD, canary)
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
