"""The world's historical dispatcher: an exploring logging policy with exact propensities.

A booking's candidates are offered one at a time in a random order drawn from a Plackett-Luce
model whose weights are a softmax over the negated logged ETA (minutes) divided by a
temperature: candidate ``i`` is offered first with probability
``exp(-eta_i / T) / sum_j exp(-eta_j / T)``, and each later offer is drawn the same way among
the candidates not offered yet. The order is sampled with the Gumbel-max trick (sort
``logit + Gumbel noise``, which draws exactly that sequential model), and the propensities are
computed in closed form from the same logits (log-sum-exp, so no overflow or 0/0 whatever the
temperature). A low temperature stays close to nearest-ETA (the selection bias that makes the
problem real); every candidate keeps a positive probability of being offered first, which is
what off-policy evaluation needs. See docs/data.md, "The historical dispatcher".
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from matchmaking.world.population import FloatArray, IntArray

POLICY_NAME = "softmax-eta"
# Minutes of logged ETA per unit of logit. Chosen from the propensity distributions in
# docs/data.md: most first offers still go to the one or two nearest candidates, while the
# candidate an acceptance model would pick is rarely offered first with a tiny probability.
DEFAULT_TEMPERATURE_MIN = 0.75
# Below this, exp(-gap / T) of a far candidate (up to an hour of ETA gap) underflows to 0 and
# the "> 0 for every candidate" contract could not be kept.
MIN_TEMPERATURE_MIN = 0.1


@dataclass(frozen=True)
class SoftmaxEtaPolicy:
    """The logging policy's parameters; ``version`` changes whenever one of them does."""

    temperature_min: float = DEFAULT_TEMPERATURE_MIN
    max_offers: int = 3

    name = POLICY_NAME

    @property
    def version(self) -> str:
        """A short digest of the parameters (logged as ``logging_policy_version``)."""
        params = {"policy": self.name, "temperature_min": self.temperature_min}
        params["max_offers"] = self.max_offers
        blob = json.dumps(params, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@dataclass(frozen=True)
class Dispatch:
    """One chunk's offer order and propensities, aligned with the candidate rows."""

    offer_pos: IntArray  # 1-based position in the sampled order (every candidate has one)
    first_offer_propensity: FloatArray  # P(this candidate is the first offer)
    offer_propensity: FloatArray  # P(offered at its position | offers before); NaN past max


def group_rank(group: IntArray, order: IntArray) -> IntArray:
    """1-based rank of each row within its group, following ``order`` (rows sorted by group)."""
    g = group[order]
    n = len(g)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - first + 1
    return rank


def _group_lse(
    logit: FloatArray, keep: npt.NDArray[np.bool_], starts: IntArray, g: IntArray
) -> FloatArray:
    """log(sum(exp(logit))) over the kept rows of each group, per row (-inf: none kept)."""
    masked = np.where(keep, logit, -np.inf)
    mx = np.maximum.reduceat(masked, starts)
    finite = np.isfinite(mx)
    shift = np.where(finite, mx, 0.0)
    total = np.add.reduceat(np.where(keep, np.exp(masked - shift[g]), 0.0), starts)
    with np.errstate(divide="ignore"):
        lse = np.where(finite, shift + np.log(total), -np.inf)
    return lse[g]


def dispatch(
    group: IntArray, eta_seconds: FloatArray, policy: SoftmaxEtaPolicy, rng: np.random.Generator
) -> Dispatch:
    """Sample each booking's offer order and compute its exact propensities.

    Args:
        group: booking index of each candidate row; rows of a booking are contiguous.
        eta_seconds: the logged ETA of each row (what the policy sees).
        policy: the temperature and the number of offers.
        rng: draws one Gumbel variate per row.
    """
    m = len(group)
    if m == 0:
        empty = np.zeros(0)
        return Dispatch(np.zeros(0, dtype=np.int64), empty, empty)
    logit = -(eta_seconds / 60.0) / policy.temperature_min
    key = logit + rng.gumbel(size=m)
    offer_pos = group_rank(group, np.lexsort((-key, group)))

    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    g = np.cumsum(np.r_[True, group[1:] != group[:-1]]) - 1
    everyone = np.ones(m, dtype=bool)
    first = np.exp(logit - _group_lse(logit, everyone, starts, g))
    cond = np.full(m, np.nan)
    for k in range(1, policy.max_offers + 1):
        at_k = offer_pos == k
        if not at_k.any():
            break
        lse = _group_lse(logit, offer_pos >= k, starts, g)
        cond[at_k] = np.exp(logit[at_k] - lse[at_k])
    return Dispatch(offer_pos=offer_pos, first_offer_propensity=first, offer_propensity=cond)


def check_temperature(temperature_min: float) -> str | None:
    """Why ``temperature_min`` is not a usable temperature, or None when it is."""
    if not (math.isfinite(temperature_min) and temperature_min >= MIN_TEMPERATURE_MIN):
        return (
            f"dispatch temperature must be a number of minutes >= {MIN_TEMPERATURE_MIN}, got "
            f"{temperature_min}; lower values make the far candidates' propensities underflow "
            f"to 0 (the default, {DEFAULT_TEMPERATURE_MIN}, stays close to nearest-ETA)"
        )
    return None
