"""The serving policy's exact propensities (Plackett-Luce and greedy) and the arm hash, against
independent computations and sampled frequencies."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from serving import policy


def _pl_probability(weights: list[float], order: tuple[int, ...]) -> float:
    """P(order) under Plackett-Luce, by the textbook product (independent of serving.policy)."""
    left = list(range(len(weights)))
    p = 1.0
    for i in order:
        p *= weights[i] / sum(weights[j] for j in left)
        left.remove(i)
    return p


@pytest.mark.parametrize(("probability", "temperature"), [(True, 0.5), (True, 2.0), (False, 0.7)])
def test_plackett_luce_propensities_equal_an_independent_computation(
    probability: bool, temperature: float
) -> None:
    scores = np.array([0.9, 0.35, 0.6, 0.05]) if probability else np.array([1.2, -0.4, 0.3, 0.0])
    if probability:
        weights = [(s / (1 - s)) ** (1 / temperature) for s in scores]  # exp(logit(s) / T)
    else:
        weights = [math.exp(s / temperature) for s in scores]
    perms = list(itertools.permutations(range(len(scores))))
    total = sum(_pl_probability(weights, p) for p in perms)
    assert total == pytest.approx(1.0)
    for seed in range(6):
        served = policy.plackett_luce(scores, probability, temperature, np.random.default_rng(seed))
        order = tuple(served.order.tolist())
        for k, i in enumerate(order):
            # P(ranked first): summed over every permutation starting with i.
            first = sum(_pl_probability(weights, p) for p in perms if p[0] == i)
            assert served.first_propensity[k] == pytest.approx(first, rel=1e-9)
            # P(at position k | the positions above): P(prefix to k) / P(prefix above k).
            above = order[:k]
            p_above = sum(_pl_probability(weights, p) for p in perms if p[:k] == above)
            p_here = sum(_pl_probability(weights, p) for p in perms if p[: k + 1] == order[: k + 1])
            assert served.propensity[k] == pytest.approx(p_here / p_above, rel=1e-9)
        assert served.policy == "plackett-luce" and served.temperature == temperature


def test_sampled_first_positions_match_first_propensity_within_binomial_bounds() -> None:
    scores = np.array([0.8, 0.6, 0.5, 0.2, 0.1])
    n = 6000
    firsts = np.zeros(len(scores))
    expected = None
    for k in range(n):
        served = policy.serve_order(scores, True, 1.0, f"req-{k}")
        firsts[served.order[0]] += 1
        expected = dict(zip(served.order.tolist(), served.first_propensity.tolist(), strict=True))
    assert expected is not None
    for i, p in expected.items():
        sd = math.sqrt(n * p * (1 - p))
        assert abs(firsts[i] - n * p) <= 4.5 * sd, (i, firsts[i], n * p)
    # Not greedy: the runner-up is ranked first in a good share of the answers.
    assert firsts[1] > 0.15 * n


def test_greedy_is_deterministic_best_first() -> None:
    served = policy.serve_order(np.array([0.2, 0.9, 0.2, 0.5]), True, None, "r")
    assert served.order.tolist() == [1, 3, 0, 2]  # ties keep the request's order
    assert served.first_propensity.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert served.propensity.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert served.policy == "greedy" and served.temperature is None
    assert policy.serve_order(np.array([0.2, 0.9]), True, 0.0, "r").policy == "greedy"


def test_the_same_request_id_draws_the_same_order() -> None:
    scores = np.linspace(0.1, 0.9, 8)
    a = policy.serve_order(scores, True, 3.0, "same").order.tolist()
    assert policy.serve_order(scores, True, 3.0, "same").order.tolist() == a
    assert any(policy.serve_order(scores, True, 3.0, f"o{k}").order.tolist() != a for k in range(5))


def test_booking_hash_is_stable_and_uniform() -> None:
    assert policy.booking_hash("b-1") == policy.booking_hash("b-1")
    hashes = np.array([policy.booking_hash(f"b-{k}") for k in range(20_000)])
    assert ((hashes >= 0) & (hashes < 1)).all()
    for share in (0.1, 0.3, 0.5):
        n, p = len(hashes), share
        assert abs((hashes < share).sum() - n * p) <= 4.5 * math.sqrt(n * p * (1 - p))


def test_exploration_setting_is_parsed_per_city_and_refused_when_malformed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic import ValidationError

    from serving.settings import ServeSettings

    monkeypatch.setenv("MATCHMAKING_SERVE_EXPLORATION", "jakarta=0.5, bangkok=0.3")
    assert ServeSettings().exploration == {"jakarta": 0.5, "bangkok": 0.3}
    for bad in ("jakarta", "jakarta=hot", "jakarta=-1", "jakarta=inf"):
        monkeypatch.setenv("MATCHMAKING_SERVE_EXPLORATION", bad)
        with pytest.raises(ValidationError, match="temperature"):
            ServeSettings()
