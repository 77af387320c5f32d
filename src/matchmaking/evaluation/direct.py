"""The direct-method part of the off-policy estimates: an acceptance probability per candidate.

The doubly robust estimator (``evaluation.offpolicy``) needs ``q(i, j)``, the probability that
candidate ``j`` of booking ``i`` accepts a first offer. It is the model's own estimate:

- a model whose scores are probabilities (``score_kind`` ``probability``, the binary
  classifier) gives them as they are;
- a ranker (``rank_score``, LambdaRank) gives scores whose scale means nothing, so they are
  calibrated to probabilities by Platt scaling (a logistic regression of the logged label on
  the score) fitted on the holdout's logged first offers. It is **cross-fitted**: the holdout's
  bookings are split into ``folds`` random folds and each fold's candidates get the
  calibration fitted on the other folds' first offers, so no booking's estimate uses its own
  outcome (which would bias the DR correction term towards 0).

Baselines (nearest ETA, highest rating) have no probability of their own: the DR estimate of
a baseline uses the model's ``q`` at the baseline's choice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import LogisticRegression

from matchmaking.errors import InputError
from matchmaking.scorer import ScoreKind

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

MODEL_PROBABILITY = "model probability"
DEFAULT_FOLDS = 5


@dataclass(frozen=True)
class DirectMethod:
    """``q_hat`` per candidate row and how it was obtained (``method``, for the run's params)."""

    q_hat: FloatArray
    method: str


def acceptance_estimates(
    scores: npt.ArrayLike,
    score_kind: ScoreKind,
    booking: npt.ArrayLike,
    fit_rows: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> DirectMethod:
    """The model's acceptance probability of every candidate row.

    Args:
        scores: the model's score per candidate row.
        score_kind: the version's ``score_kind`` (``matchmaking.scorer``).
        booking: booking id per row (the unit of the cross-fitting folds).
        fit_rows: rows the calibration is fitted on (the logged first offers).
        labels: per row, 1.0 accepted / 0.0 declined (only ``fit_rows`` are read).
        folds: cross-fitting folds for a ranker (>= 2).
        seed: the folds' random split.

    Raises:
        InputError: arrays of different lengths, fewer than 2 folds.
    """
    s = np.asarray(scores, dtype=np.float64)
    fit = np.asarray(fit_rows, dtype=bool)
    y = np.asarray(labels, dtype=np.float64)
    b = np.asarray(booking)
    if not (len(s) == len(fit) == len(y) == len(b)):
        raise InputError("acceptance_estimates: one value per candidate row in every argument")
    if score_kind == "probability":
        return DirectMethod(np.clip(s, 0.0, 1.0), MODEL_PROBABILITY)
    if folds < 2:
        raise InputError(f"acceptance_estimates: cross-fitting needs >= 2 folds, got {folds}")
    _, code = np.unique(b.astype(str), return_inverse=True)
    n_bookings = int(code.max()) + 1 if len(code) else 0
    fold_of_booking = np.random.default_rng(seed).permutation(n_bookings) % folds
    fold = fold_of_booking[code]
    # Standardise the score so the regression's default regularisation is scale free.
    centre = float(s[fit].mean()) if fit.any() else 0.0
    spread = float(s[fit].std()) if fit.sum() > 1 else 1.0
    x = ((s - centre) / (spread if spread > 0 else 1.0)).reshape(-1, 1)
    q = np.empty(len(s), dtype=np.float64)
    for k in range(folds):
        here = fold == k
        train = fit & ~here & np.isfinite(y)
        q[here] = _platt(x[train], y[train], x[here])
    logger.info(
        "calibrated rank scores on %d first offers (Platt, %d-fold cross-fitted)",
        int(fit.sum()),
        folds,
    )
    return DirectMethod(q, f"platt, {folds}-fold cross-fitted on first offers")


def _platt(x: FloatArray, y: FloatArray, at: FloatArray) -> FloatArray:
    """Platt scaling fitted on ``(x, y)`` evaluated at ``at``; the mean rate when ``y`` has
    one class only (0.5 with no rows at all)."""
    if len(at) == 0:
        return np.zeros(0)
    if len(np.unique(y)) < 2:
        return np.full(len(at), float(y.mean()) if len(y) else 0.5)
    model = LogisticRegression(C=1e4).fit(x, y.astype(np.int64))
    return np.asarray(model.predict_proba(at)[:, 1], dtype=np.float64)
