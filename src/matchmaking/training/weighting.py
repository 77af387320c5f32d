"""Sample weights that correct the selection bias of the logged offers, and the held-out test
that decides whether a weighted model is kept (``TrainParams.sample_weights``).

The labelled rows are the offered candidates, and the logging policy offers mostly the
nearest ones: a model fitted on them as logged learns the acceptance of the candidates the
dispatcher liked, while it is asked to rank every candidate. Inverse propensity weights undo
that choice (docs/evaluation.md, "Training on logged offers"):

- **binary** (one loss term per row): a row offered at position ``k`` was chosen among the
  candidates not offered yet with the logged probability ``offer_propensity`` (at ``k`` = 1,
  the ``first_offer_propensity``). Its weight ``1 / offer_propensity`` makes each of those
  candidates count once in expectation: the step-``k`` rows stand for every candidate still
  available at step ``k``. The first-offer propensity would be wrong for a later offer (the
  chance of being first, not of being chosen at ``k``), and the marginal chance of being
  offered at all depends on other drivers' declines, which the log does not price.
- **lambdarank** (a loss over pairs of a booking's offered rows): one weight per booking, the
  inverse of the probability of its logged offer sequence (the product of its rows'
  ``offer_propensity``), the same for every row of the booking. LightGBM multiplies a row's
  lambda gradient by the row's weight, so a weight constant within a booking weights each of
  its pairs symmetrically (per-row weights would weight the two sides of a pair unequally).

Each weight is capped at ``clip`` (``min(1/p, clip)``: a propensity below ``1/clip`` counts as
``1/clip``; less variance, a little bias) and the weights are then divided by their mean over
the rows of the fit, so they average 1: LightGBM's regularisation (``lambda_l2``,
``min_sum_hessian_in_leaf``) and learning rate keep the scale they were tuned at. Per-booking
normalisation is not used: most bookings have one labelled row, whose weight it would reset
to 1, undoing the correction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from matchmaking.errors import InputError
from matchmaking.evaluation.direct import acceptance_estimates
from matchmaking.evaluation.logged import DEFAULT_DR_CLIP
from matchmaking.evaluation.offpolicy import (
    PolicyEstimate,
    estimate,
    first_choice,
    first_offers,
    paired_difference,
)
from matchmaking.scorer import ScoreKind

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Weights:
    """Per-row sample weights (mean 1) and how many raw weights the clip cut."""

    values: FloatArray
    clipped: int

    @property
    def ess_share(self) -> float:
        """Effective sample size of the weights over the number of rows, in (0, 1]."""
        w = self.values
        return float(w.sum() ** 2 / (w**2).sum() / len(w)) if len(w) else float("nan")


def ipw_weights(
    propensity: npt.ArrayLike | None,
    booking: npt.ArrayLike,
    objective: str,
    clip: float,
) -> Weights:
    """Inverse-propensity weights of labelled rows (see the module docstring).

    Args:
        propensity: per row, the logged ``offer_propensity`` (the probability of the row's
            offer given the offers before it), in (0, 1].
        booking: per row, its booking code (rows of a booking contiguous).
        objective: ``binary`` (one weight per row) or ``lambdarank`` (one per booking).
        clip: the largest raw weight (>= 1).

    Raises:
        InputError: no propensities (a dataset published before the decision log carried
            them), a propensity outside (0, 1], or a clip below 1.
    """
    if propensity is None:
        raise InputError(
            "sample_weights=ipw needs the logged offer_propensity, and these features were "
            "published without it: process the window again (`matchmaking process`) or "
            "train with --set sample_weights=none"
        )
    p = np.asarray(propensity, dtype=np.float64)
    b = np.asarray(booking)
    if len(p) != len(b):
        raise InputError("ipw_weights: one propensity and one booking per row")
    if not clip >= 1:
        raise InputError(f"ipw_clip must be >= 1 (a weight cap), got {clip}")
    bad = ~((p > 0) & (p <= 1))
    if bad.any():
        raise InputError(
            f"{int(bad.sum())} labelled row(s) have an offer_propensity outside (0, 1]; the "
            "decision log must carry the probability of every offer (docs/data.md)"
        )
    if len(p) == 0:
        return Weights(np.zeros(0), 0)
    if objective == "lambdarank":
        starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
        sizes = np.diff(np.r_[starts, len(b)])
        per_booking = np.exp(-np.add.reduceat(np.log(p), starts))
        raw = np.repeat(per_booking, sizes)
        clipped = int((per_booking > clip).sum())
    elif objective == "binary":
        raw = 1.0 / p
        clipped = int((raw > clip).sum())
    else:
        raise InputError(f"ipw_weights: unknown objective {objective!r}")
    w = np.minimum(raw, clip)
    return Weights(w / w.mean(), clipped)


@dataclass(frozen=True)
class HeldOut:
    """A model's off-policy estimate of its own first-offer acceptance on the validation days."""

    estimate: PolicyEstimate
    direct_method: str


def held_out_estimate(
    scores: npt.ArrayLike,
    score_kind: ScoreKind,
    booking: npt.ArrayLike,
    offer_order: npt.ArrayLike,
    first_offer_propensity: npt.ArrayLike,
    accepted: npt.ArrayLike,
    seed: int = 0,
) -> HeldOut:
    """The doubly robust (and IPS, SNIPS) estimate of the policy "offer first to the
    candidate with the highest score" on logged candidate rows, with ``evaluate``'s defaults
    (DR weights capped at ``DEFAULT_DR_CLIP``; the model's own probabilities, or cross-fitted
    Platt calibration of a ranker's scores, as the direct method)."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.asarray(offer_order)
    acc = np.asarray(accepted, dtype=np.float64)
    log = first_offers(booking, order, first_offer_propensity, acc)
    direct = acceptance_estimates(s, score_kind, booking, order == 1, acc, seed=seed)
    est = estimate(log, first_choice(log, s), direct.q_hat, dr_clip=DEFAULT_DR_CLIP)
    return HeldOut(est, direct.method)


@dataclass(frozen=True)
class Comparison:
    """The weighted model against the unweighted one on the same validation bookings."""

    keep_weighted: bool
    reason: str
    metrics: dict[str, float]


def compare(unweighted: HeldOut, weighted: HeldOut, min_gain: float) -> Comparison:
    """Keep the weighted model only when it is clearly better: the lower end of the 95%
    interval of its DR gain over the unweighted model, measured booking by booking
    (``offpolicy.paired_difference``), is above ``min_gain``. A rule on the point estimate
    alone keeps a model on noise: in benchmarks/reports/ipw.md it kept the weighted model in 2
    pairs of 6, both where the simulator's truth says it is worse.

    Metrics: ``valid_ope_dr_<none|ipw>`` with their ``_ci_low``/``_ci_high``, the same for
    SNIPS, the support of each, and ``valid_ope_dr_gain_ipw`` (weighted minus unweighted) with
    its interval.
    """
    diff = paired_difference(weighted.estimate, unweighted.estimate)
    metrics: dict[str, float] = {}
    for name, held in (("none", unweighted), ("ipw", weighted)):
        e = held.estimate
        metrics |= {
            f"valid_ope_dr_{name}": e.dr,
            f"valid_ope_dr_{name}_ci_low": e.dr_ci[0],
            f"valid_ope_dr_{name}_ci_high": e.dr_ci[1],
            f"valid_ope_snips_{name}": e.snips,
            f"valid_ope_support_{name}": e.support,
        }
    metrics |= {
        "valid_ope_dr_gain_ipw": diff.dr,
        "valid_ope_dr_gain_ipw_ci_low": diff.dr_ci[0],
        "valid_ope_dr_gain_ipw_ci_high": diff.dr_ci[1],
        "valid_ope_bookings": float(diff.bookings),
    }
    gain = f"{100 * diff.dr:+.2f} pt [{100 * diff.dr_ci[0]:+.2f}, {100 * diff.dr_ci[1]:+.2f}]"
    keep = bool(np.isfinite(diff.dr_ci[0]) and diff.dr_ci[0] > min_gain)
    verdict = "kept" if keep else "not kept"
    reason = (
        f"ipw {verdict}: validation DR of first-offer acceptance {weighted.estimate.dr:.4f} "
        f"weighted vs {unweighted.estimate.dr:.4f} unweighted, paired gain {gain}: lower "
        f"bound {'>' if keep else '<='} {100 * min_gain:+.2f} pt on {diff.bookings:,} bookings"
    )
    logger.info(reason)
    return Comparison(keep, reason, metrics)
