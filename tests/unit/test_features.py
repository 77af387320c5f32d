"""Features on hand-made cases: heading sign, shift arithmetic, ranks, point-in-time history."""

from __future__ import annotations

import numpy as np
import pytest

from matchmaking.features.core import (
    PRIOR_RATE,
    CandidateInputs,
    build_matrix,
    group_rank_and_gap,
    minutes_to_shift_end,
    smoothed_rate,
)
from matchmaking.features.geo import direction_cosine, haversine_km, haversine_km_scalar
from matchmaking.features.history import window_counts, window_sums
from matchmaking.schema import CANDIDATES, FEATURE_NAMES, LOGGED_POLICY_COLUMNS

# Jakarta-ish coordinates; 0.01 degree of latitude is about 1.1 km.
PICKUP = (-6.20, 106.82)


def _inputs(n: int = 1, **overrides: object) -> CandidateInputs:
    base: dict[str, object] = {
        "group": np.zeros(n, dtype=np.int64),
        "driver_lat": np.full(n, -6.19),
        "driver_lng": np.full(n, 106.82),
        "pickup_lat": np.full(n, PICKUP[0]),
        "pickup_lng": np.full(n, PICKUP[1]),
        "dropoff_lat": np.full(n, -6.30),
        "dropoff_lng": np.full(n, 106.82),
        "home_lat": np.full(n, -6.40),
        "home_lng": np.full(n, 106.82),
        "rating": np.full(n, 4.8),
        "eta_seconds": np.full(n, 240.0),
        "speed_kmh": np.full(n, 20.0),
        "local_minute": np.full(n, 8 * 60 + 15.0),
        "day_of_week": np.full(n, 2.0),
        "shift_start_min": np.full(n, 7 * 60.0),
        "shift_length_min": np.full(n, 8 * 60.0),
        "trip_km": np.full(n, 14.0),
        "fare": np.full(n, 40000.0),
        "drv_offers_28d": np.full(n, 100.0),
        "drv_accepts_28d": np.full(n, 80.0),
        "drv_offer_eta_sum_28d": np.full(n, 300.0),
    }
    base.update({k: np.asarray(v) for k, v in overrides.items()})
    return CandidateInputs(**base)  # type: ignore[arg-type]


def feature(matrix: np.ndarray, name: str) -> np.ndarray:
    return matrix[:, FEATURE_NAMES.index(name)]


def test_haversine_known_distance() -> None:
    # One degree of latitude is about 111.2 km.
    d = haversine_km(np.array([0.0]), np.array([0.0]), np.array([1.0]), np.array([0.0]))
    assert d[0] == pytest.approx(111.19, abs=0.05)


def test_home_heading_sign() -> None:
    # Trip goes south; home is further south: the trip brings the driver home.
    toward = build_matrix(_inputs())
    assert feature(toward, "home_gain_km")[0] > 10
    assert feature(toward, "home_cos")[0] == pytest.approx(1.0, abs=1e-6)
    # Home to the north: the trip takes the driver away from home.
    away = build_matrix(_inputs(home_lat=np.array([-6.05])))
    assert feature(away, "home_gain_km")[0] < -10
    assert feature(away, "home_cos")[0] == pytest.approx(-1.0, abs=1e-6)
    # Home due east of the pickup: perpendicular to the trip.
    side = build_matrix(_inputs(home_lat=np.array([-6.20]), home_lng=np.array([106.95])))
    assert abs(feature(side, "home_cos")[0]) < 0.01


def test_direction_cosine_null_vector_is_zero() -> None:
    z = np.array([1.0])
    assert direction_cosine(z, z, z, z, z * 2, z)[0] == 0.0


def test_minutes_to_shift_end_wraps_midnight() -> None:
    # Shift 22:00 for 8 h; at 01:00 there are 5 h left.
    left = minutes_to_shift_end(np.array([60.0]), np.array([22 * 60.0]), np.array([480.0]))
    assert left[0] == 300.0
    # Unknown shift stays unknown (LightGBM treats NaN as missing).
    assert np.isnan(minutes_to_shift_end(np.array([60.0]), np.array([np.nan]), np.array([480.0])))[
        0
    ]


def test_rank_and_gap_per_group() -> None:
    group = np.array([0, 0, 0, 1, 1])
    eta = np.array([5.0, 3.0, 4.0, 2.0, 1.0])
    rank, gap = group_rank_and_gap(group, eta)
    assert rank.tolist() == [3, 1, 2, 2, 1]
    assert gap.tolist() == [2.0, 0.0, 1.0, 1.0, 0.0]


def test_missing_eta_is_estimated_from_speed() -> None:
    m = build_matrix(_inputs(eta_seconds=np.array([np.nan]), speed_kmh=np.array([30.0])))
    km = feature(m, "pickup_km")[0]
    assert feature(m, "eta_min")[0] == pytest.approx(km * 1.3 / 30.0 * 60.0 + 28.0 / 60.0)


def test_matrix_follows_the_contract_order() -> None:
    m = build_matrix(_inputs(3, group=np.array([0, 0, 1])))
    assert m.shape == (3, len(FEATURE_NAMES))
    assert feature(m, "rating").tolist() == [4.8, 4.8, 4.8]
    assert feature(m, "hour_local").tolist() == [8.0, 8.0, 8.0]


def test_smoothed_rate_prior_for_new_driver() -> None:
    assert smoothed_rate(np.array([0.0]), np.array([0.0]))[0] == PRIOR_RATE
    assert smoothed_rate(np.array([1000.0]), np.array([1000.0]))[0] > 0.99


def test_history_is_point_in_time() -> None:
    """A row on day D sees offers of D-28 .. D-1 only: never its own day, never later days."""
    drivers = np.array(["a"] * 5, dtype=object)
    days = np.array(
        ["2026-09-01", "2026-09-30", "2026-10-01", "2026-10-01", "2026-10-02"],
        dtype="datetime64[D]",
    )
    accepted = np.array([1.0, 1.0, 0.0, 1.0, 1.0])
    q_driver = np.array(["a", "a", "b"], dtype=object)
    q_day = np.array(["2026-10-01", "2026-10-02", "2026-10-01"], dtype="datetime64[D]")
    offers, accepts = window_counts(drivers, days, accepted, q_driver, q_day)
    # On 10-01: only 09-30 is inside the 28-day window (09-01 is 30 days back); same-day
    # offers (10-01) and the future (10-02) are invisible.
    assert offers.tolist() == [1.0, 3.0, 0.0]
    assert accepts.tolist() == [1.0, 2.0, 0.0]


def test_history_does_not_change_when_the_future_changes() -> None:
    drivers = np.array(["a", "a"], dtype=object)
    days = np.array(["2026-10-01", "2026-10-05"], dtype="datetime64[D]")
    q = (np.array(["a"], dtype=object), np.array(["2026-10-03"], dtype="datetime64[D]"))
    before = window_counts(drivers, days, np.array([1.0, 1.0]), *q)
    after = window_counts(drivers, days, np.array([1.0, 0.0]), *q)
    assert before[0].tolist() == after[0].tolist() == [1.0]
    assert before[1].tolist() == after[1].tolist() == [1.0]


def test_single_booking_fast_path_matches_the_general_path() -> None:
    values = np.array([3.0, 1.0, 3.0, 2.0, 1.0])
    single = group_rank_and_gap(np.zeros(5, dtype=np.int64), values)
    # The same booking next to another one takes the general (lexsort) path.
    both = group_rank_and_gap(
        np.r_[np.zeros(5, dtype=np.int64), np.ones(2, dtype=np.int64)], np.r_[values, 9.0, 8.0]
    )
    assert single[0].tolist() == both[0][:5].tolist() == [4, 1, 5, 3, 2]
    assert single[1].tolist() == both[1][:5].tolist()


def test_history_sums_offered_etas_point_in_time() -> None:
    drivers = np.array(["a", "a", "a"], dtype=object)
    days = np.array(["2026-10-01", "2026-10-02", "2026-10-03"], dtype="datetime64[D]")
    values = np.array([[1.0, 2.0], [0.0, 6.0], [1.0, 100.0]])  # accepted, eta minutes
    sums = window_sums(
        drivers, days, values, np.array(["a"], dtype=object), np.array(["2026-10-03"], "M8[D]")
    )
    assert sums.tolist() == [[2.0, 1.0, 8.0]]  # 10-03 itself is not seen
    m = build_matrix(_inputs(2, drv_offers_28d=[0.0, 4.0], drv_offer_eta_sum_28d=[0.0, 10.0]))
    eta = feature(m, "drv_offer_eta_28d")
    assert np.isnan(eta[0]) and eta[1] == 2.5


def test_scalar_haversine_equals_the_vector_one() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform([-10.0, 95.0, -10.0, 95.0], [20.0, 125.0, 20.0, 125.0], (200, 4))
    vector = haversine_km(*pts.T)
    scalar = [haversine_km_scalar(*map(float, p)) for p in pts]
    np.testing.assert_allclose(scalar, vector, rtol=1e-12, atol=1e-9)


def test_logged_propensities_are_never_features() -> None:
    """The logging policy's columns describe how the data was collected, not the candidate:
    a model fed them would learn the old dispatcher (and serving has no such input)."""
    assert {"first_offer_propensity", "offer_propensity"} <= set(CANDIDATES.names)
    assert {"offer_order", "first_offer_propensity", "offer_propensity"} <= set(
        LOGGED_POLICY_COLUMNS
    )
    assert {"logging_policy", "logging_policy_version"} <= set(LOGGED_POLICY_COLUMNS)
    assert set(FEATURE_NAMES).isdisjoint(LOGGED_POLICY_COLUMNS)
    assert not [n for n in FEATURE_NAMES if "propensity" in n or "offer_order" in n]
