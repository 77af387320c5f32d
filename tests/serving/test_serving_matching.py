"""Greedy versus batch assignment on hand-made cases, and the greedy-vs-batch replay."""

from __future__ import annotations

import numpy as np
import pytest
from support.assignment_oracle import brute_force_best

from matchmaking.evaluation.matching import (
    UNASSIGNED,
    batch_assignment,
    greedy_assignment,
    match_replay,
    total_score,
)


def test_batch_beats_greedy_on_the_classic_case() -> None:
    # Booking 0 slightly prefers driver 0, whom booking 1 needs badly.
    scores = np.array([[0.9, 0.8], [0.85, 0.1]])
    greedy = greedy_assignment(scores)
    batch = batch_assignment(scores)
    assert greedy.tolist() == [0, 1]
    assert batch.tolist() == [1, 0]
    assert total_score(scores, batch) == pytest.approx(1.65)
    assert total_score(scores, greedy) == pytest.approx(1.0)


def test_batch_is_optimal_with_missing_pairs_and_more_bookings_than_drivers() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        n_b, n_d = rng.integers(1, 5), rng.integers(1, 5)
        scores = rng.random((n_b, n_d))
        scores[rng.random((n_b, n_d)) < 0.3] = -np.inf  # not a candidate
        batch = batch_assignment(scores)
        used = batch[batch != UNASSIGNED]
        assert len(used) == len(set(used.tolist()))
        assert all(np.isfinite(scores[i, j]) for i, j in enumerate(batch) if j != UNASSIGNED)
        assert total_score(scores, batch) == pytest.approx(brute_force_best(scores))
        assert total_score(scores, batch) >= total_score(scores, greedy_assignment(scores)) - 1e-12


def trap(n_b: int, n_d: int, seed: int) -> np.ndarray:
    """A random low-score background with the classic trap hidden in it: an earlier booking
    takes, by a hair, the driver a later booking needs badly. Greedy falls in; optimal not."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0.0, 0.05, (n_b, n_d))
    early, late = sorted(rng.choice(n_b, 2, replace=False).tolist())
    wanted, spare = rng.choice(n_d, 2, replace=False).tolist()
    scores[early, wanted], scores[early, spare] = 0.9, 0.8
    scores[late, wanted], scores[late, spare] = 0.85, 0.1
    return scores


@pytest.mark.parametrize(("n_b", "n_d"), [(2, 2), (2, 4), (3, 3), (4, 3), (4, 5), (5, 5)])
def test_batch_is_optimal_where_greedy_is_not(n_b: int, n_d: int) -> None:
    """Fails when batch_assignment is greedy (or any order-dependent heuristic)."""
    for seed in range(5):
        scores = trap(n_b, n_d, seed)
        best = brute_force_best(scores)
        greedy = total_score(scores, greedy_assignment(scores))
        assert greedy < best - 0.4, "the construction must defeat greedy"
        assert total_score(scores, batch_assignment(scores)) == pytest.approx(best, abs=1e-12)


def test_batch_equals_brute_force_on_random_instances_where_greedy_often_loses() -> None:
    rng = np.random.default_rng(7)
    greedy_lost = 0
    for _ in range(200):
        n_b, n_d = (int(v) for v in rng.integers(1, 6, 2))
        scores = rng.random((n_b, n_d))
        batch = batch_assignment(scores)
        used = batch[batch != UNASSIGNED]
        assert len(used) == len(set(used.tolist())) == min(n_b, n_d)  # every pair adds
        best = brute_force_best(scores)
        assert total_score(scores, batch) == pytest.approx(best, abs=1e-12)
        greedy_lost += total_score(scores, greedy_assignment(scores)) < best - 1e-9
    assert greedy_lost >= 40, f"only {greedy_lost} of 200 instances tell greedy from optimal"


def test_total_not_cardinality_is_maximised() -> None:
    # One strong pair beats two weak ones: 0.9 > 0.1 + 0.1.
    scores = np.array([[0.9, -np.inf], [0.1, -np.inf], [-np.inf, 0.0]])
    scores[1, 0] = 0.1
    scores[0, 1] = 0.1
    batch = batch_assignment(scores)
    assert total_score(scores, batch) == pytest.approx(brute_force_best(scores))


def test_match_replay_reports_the_gain_of_batch_matching() -> None:
    t0 = np.datetime64("2026-11-27T08:00:00", "ms")
    # Window 1 (two bookings share driver A): greedy gives A to b1, batch gives A to b2.
    # Window 2 (60 s later): one booking, one driver, nothing to gain.
    booking = ["b1", "b1", "b2", "b3"]
    driver = ["A", "B", "A", "A"]
    when = [t0, t0, t0 + np.timedelta64(5, "s"), t0 + np.timedelta64(60, "s")]
    scores = [0.9, 0.8, 0.85, 0.5]
    p_accept = [0.9, 0.8, 0.85, 0.5]
    out = match_replay(booking, driver, np.array(when), scores, p_accept, window_s=30)
    assert out["bookings"] == 3 and out["windows"] == 2 and out["contested_windows"] == 1
    assert out["greedy_acceptance"] == pytest.approx((0.9 + 0.5) / 3)
    assert out["batch_acceptance"] == pytest.approx((0.8 + 0.85 + 0.5) / 3)
    assert out["batch_minus_greedy"] > 0
    assert out["greedy_assigned_share"] == pytest.approx(2 / 3)
    assert out["batch_assigned_share"] == pytest.approx(1.0)


def test_match_replay_accepts_tz_aware_timestamps_and_seconds() -> None:
    import pandas as pd

    aware = pd.Series(pd.to_datetime(["2026-11-27T01:00:00Z", "2026-11-27T01:00:05Z"]))
    args = (["b1", "b2"], ["A", "A"])
    by_ts = match_replay(*args, aware.to_numpy(), [0.9, 0.8], [0.9, 0.8])
    by_s = match_replay(*args, np.array([0.0, 5.0]), [0.9, 0.8], [0.9, 0.8])
    assert by_ts == by_s
    assert by_ts["contested_windows"] == 1 and by_ts["batch_acceptance"] == pytest.approx(0.45)


def test_rank_scores_are_dispatched_through_the_logistic_as_the_service_does() -> None:
    """LambdaRank scores are any real numbers: summed raw, a negative one is worth less than
    leaving the booking unassigned. ``dispatch`` (what /v1/match runs) and the replay map them
    onto (0, 1) first, so every booking with a free candidate gets a driver."""
    from matchmaking.evaluation.matching import assignment_values, dispatch

    scores = np.array([[-1.5, -2.0], [-0.5, -3.0]])
    assert (batch_assignment(scores) == UNASSIGNED).all()  # the raw sum prefers nobody
    assigned, values = dispatch(scores, probabilistic=False)
    assert sorted(assigned.tolist()) == [0, 1]
    assert values == pytest.approx(1 / (1 + np.exp(-scores)))
    assert assignment_values(scores, probabilistic=True) is scores

    times = np.array([0.0, 0.0, 1.0, 1.0])  # one window, two bookings sharing two drivers
    args = (["b1", "b1", "b2", "b2"], ["d1", "d2", "d1", "d2"], times, scores.ravel())
    truth = np.full(4, 0.5)
    raw = match_replay(*args, truth)
    mapped = match_replay(*args, truth, probabilistic=False)
    assert raw["batch_assigned_share"] == 0.0
    assert mapped["batch_assigned_share"] == 1.0 and mapped["batch_acceptance"] == 0.5
