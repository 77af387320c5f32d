"""Off-policy estimates of first-offer acceptance from the decision log alone.

The logging policy (the dispatcher that produced the holdout) made each booking's first offer
to one candidate ``a``, with a logged probability ``p0(a)`` (``first_offer_propensity``), and
the driver accepted it or not (``r`` = 1 or 0). A target policy (the model, a baseline) would
offer the booking first to the candidate it ranks first, ``t``. Its value is the expected
first-offer acceptance ``V = E[P(accept | t)]``, estimated per booking ``i`` from

- the importance weight ``w_i = 1[a_i = t_i] / p0(a_i)`` (0 when the log has no evidence
  about the target's choice, the booking then lacks *support*), optionally clipped at ``M``
  (``w_i = min(w_i, M)``: less variance, a bias). IPS and SNIPS (``clip``) and DR
  (``dr_clip``) are clipped separately: clipping IPS biases it towards 0 by the clipped
  weight times the reward, clipping DR only by the clipped weight times the direct method's
  error ``r - q``, which a calibrated ``q`` keeps near 0 (benchmarks/reports/ope.md);
- a direct-method estimate ``q(i, j)`` of the acceptance probability of every candidate ``j``
  (the model's own, ``evaluation.direct``).

Estimators, each the mean of a per-booking contribution over the ``n`` bookings with a logged
first offer (bookings without one, no candidates or no offer, are excluded and counted):

- IPS (inverse propensity scoring): ``w_i r_i``. Unbiased without clipping, high variance.
- SNIPS (self-normalised IPS): ``sum(w r) / sum(w)``. Slightly biased, lower variance; equals
  IPS when the weights average 1.
- DM (direct method): ``q(i, t_i)``. Low variance, biased by the model's errors.
- DR (doubly robust, Dudik et al. 2011): ``q(i, t_i) + w_i (r_i - q(i, a_i))``. Unbiased when
  either the propensities or ``q`` are right; equals DM on bookings without support.

Intervals (``level``, default 95%) are normal (CLT) intervals on the per-booking
contributions: mean +- z * sd / sqrt(n); SNIPS's by the delta method on the ratio, with the
contributions ``w_i (r_i - SNIPS) / mean(w)``. The effective sample size of the weights is
``sum(w)^2 / sum(w^2)``: about how many bookings the estimate really rests on.

Everything here is pure numpy on arrays: no MLflow, no lake (docs/evaluation.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.stats import norm

from matchmaking.errors import DataQualityError, InputError
from matchmaking.evaluation.replay import pick_best

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: How the intervals are computed (recorded with the estimates).
INTERVAL_METHOD = "normal (CLT) on per-booking contributions; SNIPS by the delta method"
ESTIMATORS = ("ips", "snips", "dr")


@dataclass(frozen=True)
class FirstOffers:
    """The logged first offer of every booking that had one.

    Attributes:
        group: per candidate row, the index of its booking in this log (``0..n-1``), or -1
            for a row of an excluded booking.
        row: per booking, the candidate row the logging policy offered first.
        propensity: per booking, the logged probability of that first offer.
        accepted: per booking, 1.0 when that offer was accepted, else 0.0.
        excluded: bookings without a logged first offer (left out of every estimate).
    """

    group: IntArray
    row: IntArray
    propensity: FloatArray
    accepted: FloatArray
    excluded: int

    @property
    def bookings(self) -> int:
        return len(self.row)


def first_offers(
    booking: npt.ArrayLike,
    offer_order: npt.ArrayLike,
    first_offer_propensity: npt.ArrayLike,
    accepted: npt.ArrayLike,
) -> FirstOffers:
    """Per booking, the logged first offer, from candidate rows.

    Args:
        booking: booking id (or code) per candidate row.
        offer_order: 0 = not offered, 1 = the booking's first offer, 2 = second, ...
        first_offer_propensity: per row, the logging policy's probability of making that
            candidate the first offer (only the first-offer rows' values are used).
        accepted: per row, whether the offer was accepted (NaN or anything when not offered).

    Raises:
        DataQualityError: a booking has two first offers, or a first offer's propensity is
            not in (0, 1] (the log cannot support an estimate).
    """
    codes, n_groups = _codes(booking)
    order = np.asarray(offer_order)
    prop = np.asarray(first_offer_propensity, dtype=np.float64)
    acc = np.asarray(accepted, dtype=np.float64)
    if not (len(codes) == len(order) == len(prop) == len(acc)):
        raise InputError("first_offers: every argument needs one value per candidate row")
    first = np.flatnonzero(order == 1)
    counts = np.bincount(codes[first], minlength=n_groups)
    if (counts > 1).any():
        raise DataQualityError(
            f"{int((counts > 1).sum())} booking(s) have more than one first offer "
            "(offer_order == 1); fix the decision log before estimating from it"
        )
    bad = ~((prop[first] > 0) & (prop[first] <= 1))
    if bad.any():
        raise DataQualityError(
            f"{int(bad.sum())} first offer(s) have a propensity outside (0, 1]; the logging "
            "policy must log the probability of every offer it makes"
        )
    first = first[np.argsort(codes[first], kind="stable")]
    kept = counts == 1
    renumber = np.full(n_groups, -1, dtype=np.int64)
    renumber[kept] = np.arange(int(kept.sum()))
    reward = acc[first]
    return FirstOffers(
        group=renumber[codes],
        row=first.astype(np.int64),
        propensity=prop[first],
        accepted=np.where(np.isfinite(reward), reward, 0.0).astype(np.float64),
        excluded=int((~kept).sum()),
    )


def first_choice(log: FirstOffers, scores: npt.ArrayLike) -> IntArray:
    """Per booking of ``log``, the candidate row a deterministic policy offers first: the one
    with the highest score (ties: the first row)."""
    s = np.asarray(scores, dtype=np.float64)
    if len(s) != len(log.group):
        raise InputError("first_choice: one score per candidate row is needed")
    inside = np.flatnonzero(log.group >= 0)
    return inside[pick_best(log.group[inside], s[inside])]


@dataclass(frozen=True)
class PolicyEstimate:
    """A target policy's estimated first-offer acceptance on one log.

    Intervals are ``(low, high)`` at ``level``; ``ips_terms`` and ``dr_terms`` are the
    per-booking contributions (their means are ``ips`` and ``dr``), kept for
    ``paired_difference``.
    """

    ips: float
    ips_ci: tuple[float, float]
    snips: float
    snips_ci: tuple[float, float]
    dr: float
    dr_ci: tuple[float, float]
    dm: float
    ess: float
    support: float
    supported: int
    bookings: int
    excluded: int
    clip: float | None
    clipped: int
    dr_clip: float | None
    dr_clipped: int
    level: float
    choice: IntArray
    ips_terms: FloatArray
    dr_terms: FloatArray
    logged_row: IntArray

    def metrics(self) -> dict[str, float]:
        """Flat numbers for logging: ``dr``, ``dr_ci_low``, ``dr_ci_high``, the same for
        ``ips`` and ``snips``, ``dm``, ``ess``, ``support``, ``supported``, ``bookings``,
        ``excluded``, ``clipped`` and ``dr_clipped`` (weights cut by ``clip``, by
        ``dr_clip``), and ``clip``, ``dr_clip`` when set."""
        out: dict[str, float] = {}
        for name in ESTIMATORS:
            low, high = getattr(self, f"{name}_ci")
            out |= {name: getattr(self, name), f"{name}_ci_low": low, f"{name}_ci_high": high}
        out |= {
            "dm": self.dm,
            "ess": self.ess,
            "support": self.support,
            "supported": float(self.supported),
            "bookings": float(self.bookings),
            "excluded": float(self.excluded),
            "clipped": float(self.clipped),
            "dr_clipped": float(self.dr_clipped),
        }
        if self.clip is not None:
            out["clip"] = self.clip
        if self.dr_clip is not None:
            out["dr_clip"] = self.dr_clip
        return out


def estimate(
    log: FirstOffers,
    choice: npt.ArrayLike,
    q_hat: npt.ArrayLike,
    *,
    clip: float | None = None,
    dr_clip: float | None = None,
    level: float = 0.95,
) -> PolicyEstimate:
    """IPS, SNIPS and DR estimates (with intervals), ESS and support of a deterministic policy.

    Args:
        log: the logged first offers (``first_offers``).
        choice: per booking of ``log``, the candidate row the target offers first
            (``first_choice``).
        q_hat: per candidate row, the direct-method acceptance probability in [0, 1].
        clip: cap on the importance weights of IPS and SNIPS (None: no clipping). A cap
            below the largest weight biases IPS towards 0 and narrows its interval.
        dr_clip: cap on the weights of DR's correction term (None: no clipping); it biases
            DR only as much as ``q_hat`` is wrong on the clipped bookings.
        level: confidence level of the intervals.

    Raises:
        InputError: arrays of the wrong length, ``q_hat`` outside [0, 1], a clip <= 0 or a
            level outside (0, 1).
    """
    t = np.asarray(choice, dtype=np.int64)
    q = np.asarray(q_hat, dtype=np.float64)
    if len(t) != log.bookings or len(q) != len(log.group):
        raise InputError("estimate: one choice per booking and one q_hat per candidate row")
    if len(q) and not (np.all(q >= 0) and np.all(q <= 1)):
        raise InputError("estimate: q_hat must be probabilities in [0, 1]; calibrate scores")
    for name, cap in (("clip", clip), ("dr_clip", dr_clip)):
        if cap is not None and not cap > 0:
            raise InputError(f"estimate: {name} must be > 0 (got {cap}); leave it out for none")
    if not 0 < level < 1:
        raise InputError(f"estimate: level must lie in (0, 1), got {level}")
    z = float(norm.ppf(0.5 + level / 2))
    r = log.accepted
    match = t == log.row
    raw = np.where(match, 1.0 / log.propensity, 0.0)
    w, clipped = _clipped(raw, clip)
    w_dr, dr_clipped = _clipped(raw, dr_clip)
    ips_terms = w * r
    dm_terms = q[t] if len(t) else np.zeros(0)
    dr_terms = dm_terms + w_dr * (r - q[log.row]) if len(t) else np.zeros(0)
    n = log.bookings
    ips, ips_ci = _mean_ci(ips_terms, z)
    dr, dr_ci = _mean_ci(dr_terms, z)
    w_sum = float(w.sum())
    if w_sum > 0:
        snips = float(ips_terms.sum() / w_sum)
        half = _half_width(w * (r - snips) / (w_sum / n), z)
        snips_ci = (snips - half, snips + half)
    else:
        snips, snips_ci = math.nan, (math.nan, math.nan)
    w_sq = float((w**2).sum())
    return PolicyEstimate(
        ips=ips,
        ips_ci=ips_ci,
        snips=snips,
        snips_ci=snips_ci,
        dr=dr,
        dr_ci=dr_ci,
        dm=float(dm_terms.mean()) if n else math.nan,
        ess=w_sum**2 / w_sq if w_sq > 0 else 0.0,
        support=float(match.mean()) if n else math.nan,
        supported=int(match.sum()),
        bookings=n,
        excluded=log.excluded,
        clip=clip,
        clipped=clipped,
        dr_clip=dr_clip,
        dr_clipped=dr_clipped,
        level=level,
        choice=t,
        ips_terms=ips_terms,
        dr_terms=dr_terms,
        logged_row=log.row,
    )


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` of two policies' estimates on the same bookings, with intervals."""

    dr: float
    dr_ci: tuple[float, float]
    ips: float
    ips_ci: tuple[float, float]
    bookings: int
    supported_a: int
    supported_b: int
    level: float

    def metrics(self) -> dict[str, float]:
        """``dr``, ``dr_ci_low``, ``dr_ci_high``, the same for ``ips``, ``bookings``,
        ``supported_a``, ``supported_b``."""
        return {
            "dr": self.dr,
            "dr_ci_low": self.dr_ci[0],
            "dr_ci_high": self.dr_ci[1],
            "ips": self.ips,
            "ips_ci_low": self.ips_ci[0],
            "ips_ci_high": self.ips_ci[1],
            "bookings": float(self.bookings),
            "supported_a": float(self.supported_a),
            "supported_b": float(self.supported_b),
        }


def paired_difference(a: PolicyEstimate, b: PolicyEstimate) -> PairedDifference:
    """The difference ``a - b`` of two policies scored on the same logged bookings.

    Both estimates must come from ``estimate`` on the same ``FirstOffers`` (same bookings,
    same logged offers) with the same clips and level. The difference is taken booking by
    booking: ``d_i = dr_a(i) - dr_b(i)`` (and likewise for IPS), so what both policies share
    (the same choice on a booking, the same luck of its logged outcome) cancels and the
    interval (normal, on the ``d_i``) is much narrower than the two separate intervals would
    suggest. A policy compared with itself gives 0 with a zero-width interval. Use it to
    decide "is the candidate no worse than Production by more than a tolerance": look at
    ``dr_ci[0]`` against minus the tolerance (docs/evaluation.md).

    Raises:
        InputError: the two estimates are not on the same bookings, clips or level.
    """
    if a.bookings != b.bookings or not np.array_equal(a.logged_row, b.logged_row):
        raise InputError("paired_difference: both estimates must be on the same logged bookings")
    if (a.clip, a.dr_clip, a.level) != (b.clip, b.dr_clip, b.level):
        raise InputError(
            "paired_difference: both estimates need the same clip, dr_clip and level "
            f"({a.clip}, {a.dr_clip}, {a.level} vs {b.clip}, {b.dr_clip}, {b.level})"
        )
    z = float(norm.ppf(0.5 + a.level / 2))
    dr, dr_ci = _mean_ci(a.dr_terms - b.dr_terms, z)
    ips, ips_ci = _mean_ci(a.ips_terms - b.ips_terms, z)
    return PairedDifference(
        dr=dr,
        dr_ci=dr_ci,
        ips=ips,
        ips_ci=ips_ci,
        bookings=a.bookings,
        supported_a=a.supported,
        supported_b=b.supported,
        level=a.level,
    )


def _codes(values: npt.ArrayLike) -> tuple[IntArray, int]:
    arr = np.asarray(values)
    if arr.dtype.kind in "iu" and (arr.size == 0 or arr.min() >= 0):
        codes = arr.astype(np.int64)
        uniq, inverse = np.unique(codes, return_inverse=True)
        return inverse.astype(np.int64), len(uniq)
    uniq, inverse = np.unique(arr.astype(object).astype(str), return_inverse=True)
    return inverse.astype(np.int64), len(uniq)


def _clipped(weights: FloatArray, cap: float | None) -> tuple[FloatArray, int]:
    """``weights`` capped at ``cap`` and how many were cut."""
    if cap is None:
        return weights, 0
    return np.minimum(weights, cap), int((weights > cap).sum())


def _half_width(terms: FloatArray, z: float) -> float:
    """``z`` standard errors of the mean of ``terms`` (NaN with fewer than two)."""
    n = len(terms)
    return z * float(terms.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan


def _mean_ci(terms: FloatArray, z: float) -> tuple[float, tuple[float, float]]:
    """Mean of ``terms`` and its normal interval."""
    if len(terms) == 0:
        return math.nan, (math.nan, math.nan)
    mean = float(terms.mean())
    half = _half_width(terms, z)
    return mean, (mean - half, mean + half)
