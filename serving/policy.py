"""The serving policy: which order of the candidates is served, with its exact probabilities,
and which arm (champion or challenger) answers a booking.

Greedy (``policy`` "greedy", ``temperature`` null): candidates by score, best first (ties: the
request's order). Deterministic, so ``first_propensity`` is 1 for the top candidate and 0 for
the rest, and ``propensity`` is 1 at every position.

Plackett-Luce (``policy`` "plackett-luce", ``temperature`` T > 0): each candidate ``i`` gets
the utility

    u_i = logit(s_i) / T     for probability scores (s clipped to [1e-6, 1 - 1e-6]),
    u_i = s_i / T            for ranking scores (lambdarank),

and the served order ``sigma`` is drawn position by position without replacement, each
remaining candidate with probability proportional to ``exp(u)``. Its exact probabilities:

    first_propensity_i = exp(u_i) / sum_j exp(u_j)                  P(i is ranked first)
    propensity_k       = exp(u_sigma(k)) / sum_{m >= k} exp(u_sigma(m))
                                                    P(sigma(k) at position k | positions < k)

(the product of ``propensity`` over positions 1..k is the probability of the served prefix).
Sampling uses the Gumbel-max trick (``argsort(-(u + Gumbel noise))`` is an exact Plackett-Luce
draw) with an RNG seeded from the request id: one answer per request id, reproducible from the
log. A small T is close to greedy; a large T close to uniform.

Arms: a challenger (``conventions.CHALLENGER_ALIAS``) gets the bookings whose ``booking_hash``
is below its share; ``booking_hash`` is blake2b of the booking id mapped to [0, 1), so a
booking keeps its arm across retries and replicas.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from matchmaking.features.core import FloatArray

GREEDY = "greedy"
PLACKETT_LUCE = "plackett-luce"
_CLIP = 1e-6
_TWO_64 = float(2**64)


@dataclass(frozen=True)
class Order:
    """A served order: candidate indices best first, and their probabilities in that order."""

    order: np.ndarray  # indices into the request's candidates
    first_propensity: FloatArray
    propensity: FloatArray
    policy: str
    temperature: float | None


def utilities(scores: FloatArray, probability: bool, temperature: float) -> FloatArray:
    """Plackett-Luce utilities of ``scores`` (see the module docstring)."""
    s = np.asarray(scores, dtype=np.float64)
    if probability:
        p = np.clip(s, _CLIP, 1.0 - _CLIP)
        s = np.log(p) - np.log1p(-p)
    return s / temperature


def greedy(scores: FloatArray) -> Order:
    """Best score first (ties: the request's order), deterministic."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    first = np.zeros(len(order))
    if len(order):
        first[0] = 1.0
    return Order(order, first, np.ones(len(order)), GREEDY, None)


def _log_softmax(u: FloatArray) -> FloatArray:
    m = float(np.max(u))
    return u - (m + np.log(np.sum(np.exp(u - m))))


def propensities(u: FloatArray, order: np.ndarray) -> tuple[FloatArray, FloatArray]:
    """(first_propensity, propensity) of ``order`` under Plackett-Luce with utilities ``u``,
    both in the order's order."""
    first = np.exp(_log_softmax(u))[order]
    ranked = u[order]
    # log sum_{m >= k} exp(u_m): a reversed running logaddexp.
    tail = np.logaddexp.accumulate(ranked[::-1])[::-1]
    return first, np.exp(ranked - tail)


def seed_of(request_id: str) -> int:
    """The sampling seed of a request (its id, hashed)."""
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")


def plackett_luce(
    scores: FloatArray, probability: bool, temperature: float, rng: np.random.Generator
) -> Order:
    """One Plackett-Luce draw of the order, with its exact propensities."""
    u = utilities(scores, probability, temperature)
    order = np.argsort(-(u + rng.gumbel(size=len(u))), kind="stable")
    first, prop = propensities(u, order)
    return Order(order, first, prop, PLACKETT_LUCE, float(temperature))


def serve_order(
    scores: FloatArray, probability: bool, temperature: float | None, request_id: str
) -> Order:
    """The order to serve: Plackett-Luce when ``temperature`` > 0, else greedy."""
    if temperature is None or temperature <= 0:
        return greedy(scores)
    rng = np.random.default_rng(seed_of(request_id))
    return plackett_luce(scores, probability, temperature, rng)


def booking_hash(booking_id: str) -> float:
    """A stable number in [0, 1) for a booking: blake2b of its id."""
    digest = hashlib.blake2b(booking_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _TWO_64
