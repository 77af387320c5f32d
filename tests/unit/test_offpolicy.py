"""The off-policy estimators on hand-made logs whose answers are known (evaluation.offpolicy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from matchmaking.errors import DataQualityError, InputError
from matchmaking.evaluation.direct import MODEL_PROBABILITY, acceptance_estimates
from matchmaking.evaluation.offpolicy import (
    FirstOffers,
    estimate,
    first_choice,
    first_offers,
    paired_difference,
)

Z95 = 1.959963984540054


def uniform_log(first: list[int], accepted: list[int], k: int = 2) -> FirstOffers:
    """Bookings of ``k`` candidates each, the first offer drawn uniformly (propensity 1/k):
    ``first[i]`` is the candidate offered first in booking ``i``, ``accepted[i]`` its outcome."""
    n = len(first)
    booking = np.repeat(np.arange(n), k)
    order = np.zeros(n * k, dtype=np.int64)
    acc = np.full(n * k, np.nan)
    for i, (j, a) in enumerate(zip(first, accepted, strict=True)):
        order[i * k + j] = 1
        acc[i * k + j] = a
    return first_offers(booking, order, np.full(n * k, 1.0 / k), acc)


def scores_for(choice: list[int], k: int = 2) -> np.ndarray:
    """Scores that make ``choice[i]`` the top candidate of booking ``i``."""
    s = np.zeros(len(choice) * k)
    for i, j in enumerate(choice):
        s[i * k + j] = 1.0
    return s


def test_uniform_logging_and_a_deterministic_target_give_the_hand_computed_estimates() -> None:
    log = uniform_log(first=[0, 1, 0, 0], accepted=[1, 1, 0, 1])
    choice = first_choice(log, scores_for([0, 0, 0, 0]))
    assert choice.tolist() == [0, 2, 4, 6]
    est = estimate(log, choice, np.full(8, 0.5))
    # weights 2, 0, 2, 2 (1 / 0.5 where the log agrees with the target)
    assert est.ips == pytest.approx((2 + 0 + 0 + 2) / 4)
    assert est.snips == pytest.approx(4 / 6)
    assert est.dm == pytest.approx(0.5)
    assert est.dr == pytest.approx((1.5 + 0.5 - 0.5 + 1.5) / 4)
    assert est.ess == pytest.approx(36 / 12)
    assert (est.support, est.supported, est.bookings, est.excluded) == (0.75, 3, 4, 0)
    half = Z95 * np.std([2.0, 0, 0, 2], ddof=1) / 2
    assert est.ips_ci == pytest.approx((1.0 - half, 1.0 + half))
    half = Z95 * np.std([1.5, 0.5, -0.5, 1.5], ddof=1) / 2
    assert est.dr_ci == pytest.approx((0.75 - half, 0.75 + half))
    # SNIPS by the delta method: w (r - snips) / mean(w)
    psi = np.array([2 * (1 - 2 / 3), 0, 2 * (0 - 2 / 3), 2 * (1 - 2 / 3)]) / 1.5
    half = Z95 * np.std(psi, ddof=1) / 2
    assert est.snips_ci == pytest.approx((2 / 3 - half, 2 / 3 + half))
    m = est.metrics()
    assert m["dr_ci_low"] == est.dr_ci[0] and m["snips_ci_high"] == est.snips_ci[1]
    assert "clip" not in m and m["clipped"] == 0


def test_estimates_recover_the_true_value_under_a_uniform_logging_policy() -> None:
    """Many simulated bookings: every estimator's interval covers the true value of the
    target, a policy that is not the logging policy."""
    rng = np.random.default_rng(3)
    n, k = 20_000, 4
    p = rng.uniform(0.2, 0.9, size=(n, k))
    first = rng.integers(0, k, size=n)
    accepted = rng.random(n) < p[np.arange(n), first]
    order = np.zeros((n, k), dtype=np.int64)
    order[np.arange(n), first] = 1
    acc = np.where(order == 1, accepted[:, None].astype(float), np.nan)
    booking = np.repeat(np.arange(n), k)
    log = first_offers(booking, order.ravel(), np.full(n * k, 1 / k), acc.ravel())
    target = p + rng.normal(0, 0.1, size=p.shape)  # a good, imperfect policy
    choice = first_choice(log, target.ravel())
    truth = float(p.ravel()[choice].mean())
    noisy_q = np.clip(p + rng.normal(0, 0.15, size=p.shape), 0, 1).ravel()
    est = estimate(log, choice, noisy_q)
    for name in ("ips", "snips", "dr"):
        low, high = getattr(est, f"{name}_ci")
        assert low <= truth <= high, (name, low, truth, high)
    assert est.support == pytest.approx(1 / k, abs=0.01)
    # DR with a reasonable q is tighter than IPS
    assert est.dr_ci[1] - est.dr_ci[0] < est.ips_ci[1] - est.ips_ci[0]


def test_zero_support_leaves_ips_at_zero_and_dr_equal_to_the_direct_method() -> None:
    log = uniform_log(first=[1, 1, 1], accepted=[1, 0, 1])
    choice = first_choice(log, scores_for([0, 0, 0]))
    q = np.array([0.2, 0.9, 0.4, 0.9, 0.6, 0.9])
    est = estimate(log, choice, q)
    assert (est.support, est.supported, est.ess) == (0.0, 0, 0.0)
    assert est.ips == 0.0 and est.ips_ci == (0.0, 0.0)
    assert math.isnan(est.snips) and all(math.isnan(v) for v in est.snips_ci)
    assert est.dr == pytest.approx(est.dm) == pytest.approx((0.2 + 0.4 + 0.6) / 3)


def test_dr_equals_dm_on_bookings_without_support_and_corrects_it_on_the_others() -> None:
    log = uniform_log(first=[0, 1], accepted=[1, 1])
    choice = first_choice(log, scores_for([0, 0]))
    est = estimate(log, choice, np.full(4, 0.3))
    assert est.dr_terms.tolist() == pytest.approx([0.3 + 2 * 0.7, 0.3])


def test_clipping_caps_the_weights_and_is_recorded() -> None:
    # ten candidates, uniform: weight 10 where the target agrees with the log
    log = uniform_log(first=[0, 0, 3], accepted=[1, 0, 1], k=10)
    choice = first_choice(log, scores_for([0, 0, 0], k=10))
    q = np.full(30, 0.5)
    plain = estimate(log, choice, q)
    clipped = estimate(log, choice, q, clip=4.0)
    assert plain.ips == pytest.approx(10 / 3)
    assert clipped.ips == pytest.approx(4 / 3)
    assert clipped.dr == plain.dr  # clip caps IPS and SNIPS only
    assert (clipped.clipped, clipped.clip, clipped.dr_clipped) == (2, 4.0, 0)
    assert clipped.metrics()["clip"] == 4.0 and clipped.metrics()["clipped"] == 2
    assert "dr_clip" not in clipped.metrics()
    assert clipped.ips_ci[1] - clipped.ips_ci[0] < plain.ips_ci[1] - plain.ips_ci[0]
    dr = estimate(log, choice, q, dr_clip=4.0)
    assert plain.dr == pytest.approx((0.5 + 10 * 0.5 + 0.5 - 10 * 0.5 + 0.5) / 3)
    assert dr.dr == pytest.approx((0.5 + 4 * 0.5 + 0.5 - 4 * 0.5 + 0.5) / 3)
    assert dr.ips == plain.ips and (dr.dr_clipped, dr.metrics()["dr_clip"]) == (2, 4.0)
    assert dr.dr_ci[1] - dr.dr_ci[0] < plain.dr_ci[1] - plain.dr_ci[0]
    # a clip above every weight changes nothing
    assert estimate(log, choice, q, clip=50.0).ips == plain.ips
    assert estimate(log, choice, q, dr_clip=50.0).dr == plain.dr
    with pytest.raises(InputError, match="clip must be > 0"):
        estimate(log, choice, q, clip=0.0)
    with pytest.raises(InputError, match="dr_clip must be > 0"):
        estimate(log, choice, q, dr_clip=-1.0)


def test_snips_equals_ips_when_the_weights_average_one() -> None:
    # two candidates at 0.5: one booking agrees (weight 2), one does not (weight 0): mean 1
    log = uniform_log(first=[0, 1, 1, 0], accepted=[1, 0, 1, 0])
    choice = first_choice(log, scores_for([0, 0, 1, 1]))
    w = np.array([2.0, 0.0, 2.0, 0.0])
    assert w.mean() == 1.0
    est = estimate(log, choice, np.full(8, 0.5))
    assert est.snips == pytest.approx(est.ips) == pytest.approx((2 + 2) / 4)


def test_a_policy_paired_with_itself_differs_by_zero_with_a_zero_width_interval() -> None:
    log = uniform_log(first=[0, 1, 0, 1, 0], accepted=[1, 0, 0, 1, 1])
    q = np.linspace(0.1, 0.9, 10)
    a = estimate(log, first_choice(log, scores_for([0, 0, 1, 1, 0])), q)
    same = paired_difference(a, a)
    assert same.dr == 0.0 and same.dr_ci == (0.0, 0.0)
    assert same.ips == 0.0 and same.ips_ci == (0.0, 0.0)
    b = estimate(log, first_choice(log, scores_for([1, 1, 1, 1, 1])), q)
    diff = paired_difference(a, b)
    assert diff.dr == pytest.approx(a.dr - b.dr)
    assert diff.ips == pytest.approx(a.ips - b.ips)
    d = a.dr_terms - b.dr_terms
    half = Z95 * np.std(d, ddof=1) / math.sqrt(5)
    assert diff.dr_ci == pytest.approx((diff.dr - half, diff.dr + half))
    assert diff.metrics()["supported_a"] == a.supported


def test_paired_difference_refuses_estimates_on_other_bookings_or_clips() -> None:
    log = uniform_log(first=[0, 1], accepted=[1, 0])
    other = uniform_log(first=[1, 1], accepted=[1, 0])
    q = np.full(4, 0.5)
    a = estimate(log, first_choice(log, scores_for([0, 0])), q)
    with pytest.raises(InputError, match="same logged bookings"):
        paired_difference(a, estimate(other, first_choice(other, scores_for([0, 0])), q))
    with pytest.raises(InputError, match="same clip"):
        paired_difference(a, estimate(log, a.choice, q, clip=1.5))
    with pytest.raises(InputError, match="same clip"):
        paired_difference(a, estimate(log, a.choice, q, dr_clip=1.5))


def test_bookings_without_a_first_offer_are_excluded_and_counted() -> None:
    booking = np.array(["b1", "b1", "b2", "b2", "b3"])
    order = np.array([1, 0, 0, 0, 1])
    prop = np.array([0.6, 0.4, 0.5, 0.5, 1.0])
    acc = np.array([1.0, np.nan, np.nan, np.nan, 0.0])
    log = first_offers(booking, order, prop, acc)
    assert (log.bookings, log.excluded) == (2, 1)
    assert log.group.tolist() == [0, 0, -1, -1, 1]
    assert log.row.tolist() == [0, 4] and log.accepted.tolist() == [1.0, 0.0]
    choice = first_choice(log, np.array([0.0, 1.0, 5.0, 5.0, 0.0]))
    assert choice.tolist() == [1, 4]  # never a row of the excluded booking
    est = estimate(log, choice, np.full(5, 0.5))
    assert est.excluded == 1 and est.bookings == 2 and est.ips == pytest.approx(0.0)


def test_a_log_that_cannot_support_an_estimate_is_refused() -> None:
    acc = np.array([1.0, np.nan])
    with pytest.raises(DataQualityError, match="more than one first offer"):
        first_offers(np.array([1, 1]), np.array([1, 1]), np.array([0.5, 0.5]), acc)
    with pytest.raises(DataQualityError, match="propensity outside"):
        first_offers(np.array([1, 1]), np.array([1, 0]), np.array([0.0, 1.0]), acc)
    log = first_offers(np.array([1, 1]), np.array([1, 0]), np.array([0.5, 0.5]), acc)
    with pytest.raises(InputError, match="probabilities"):
        estimate(log, log.row, np.array([1.5, 0.5]))


def test_probabilities_are_the_direct_method_as_they_are() -> None:
    scores = np.array([0.2, 0.7, 1.0])
    dm = acceptance_estimates(scores, "probability", [1, 1, 2], [True, False, True], [1, 0, 0])
    assert dm.method == MODEL_PROBABILITY and dm.q_hat.tolist() == scores.tolist()


def test_rank_scores_are_calibrated_cross_fitted_on_first_offers() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    score = rng.normal(0, 2, n)  # a ranker's scale: anything
    truth = 1 / (1 + np.exp(-(0.8 * score - 0.3)))
    label = (rng.random(n) < truth).astype(float)
    booking = np.arange(n)
    fit = np.ones(n, dtype=bool)
    dm = acceptance_estimates(score, "rank_score", booking, fit, label, folds=4, seed=1)
    assert "cross-fitted" in dm.method
    assert np.all((dm.q_hat > 0) & (dm.q_hat < 1))
    assert np.abs(dm.q_hat - truth).mean() < 0.03
    # cross-fitted: a booking's own outcome never moves its own estimate
    flipped = label.copy()
    flipped[0] = 1 - flipped[0]
    again = acceptance_estimates(score, "rank_score", booking, fit, flipped, folds=4, seed=1)
    assert again.q_hat[0] == dm.q_hat[0]
    assert not np.array_equal(again.q_hat, dm.q_hat)
