"""Assigning drivers to bookings: greedy (one booking at a time) versus batch (Hungarian).

Both take a score matrix ``scores[booking, driver]`` (predicted acceptance; NaN or -inf where a
driver is not a candidate of the booking) and return, per booking, the driver index or -1.
Each driver is used at most once. Batch matching maximises the total score with
``scipy.optimize.linear_sum_assignment``; greedy lets bookings choose in arrival order.

``dispatch`` is the batch step the scoring service's ``/v1/match`` runs on a model's scores
(``assignment_values`` first maps rank scores onto (0, 1) so they can be added up);
``match_replay`` replays a holdout with greedy and batch in short dispatch windows, on the same
values, and reports the expected acceptances under the ground truth.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
UNASSIGNED = -1


def _valid(scores: FloatArray) -> npt.NDArray[np.bool_]:
    return np.isfinite(scores)


def greedy_assignment(scores: FloatArray) -> IntArray:
    """Bookings in row order each take their best still-free driver (ties: lowest index)."""
    n_b, n_d = scores.shape
    out = np.full(n_b, UNASSIGNED, dtype=np.int64)
    free = np.ones(n_d, dtype=bool)
    valid = _valid(scores)
    for i in range(n_b):
        ok = valid[i] & free
        if not ok.any():
            continue
        j = int(np.argmax(np.where(ok, scores[i], -np.inf)))
        out[i] = j
        free[j] = False
    return out


def batch_assignment(scores: FloatArray) -> IntArray:
    """The assignment maximising the total score, each driver at most once.

    Every booking may also stay unassigned (worth 0), so a pair is used only when it adds to
    the total: with probabilities, that is every pair that helps; a non-finite score (not a
    candidate) is never assigned.
    """
    n_b, n_d = scores.shape
    out = np.full(n_b, UNASSIGNED, dtype=np.int64)
    valid = _valid(scores)
    if n_b == 0 or not valid.any():
        return out
    # Invalid pairs cost more than any valid total could gain; n_b "unassigned" columns worth 0.
    forbidden = -(1.0 + float(np.abs(scores[valid]).sum())) * 2.0
    weight = np.concatenate([np.where(valid, scores, forbidden), np.zeros((n_b, n_b))], axis=1)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    real = cols < n_d
    rows, cols = rows[real], cols[real]
    keep = valid[rows, cols]
    out[rows[keep]] = cols[keep]
    return out


def total_score(scores: FloatArray, assignment: IntArray) -> float:
    """Sum of the scores of the assigned pairs."""
    rows = np.flatnonzero(assignment != UNASSIGNED)
    return float(scores[rows, assignment[rows]].sum()) if len(rows) else 0.0


def assignment_values(scores: FloatArray, probabilistic: bool) -> FloatArray:
    """What assignment adds up: probabilities as they are; rank scores (any real number, only
    their order means something) through the logistic onto (0, 1), so that no pair is worth
    less than leaving a booking unassigned. Non-finite scores (not a candidate) stay so."""
    if probabilistic:
        return scores
    with np.errstate(over="ignore"):
        return np.asarray(1.0 / (1.0 + np.exp(-scores)), dtype=np.float64)


def dispatch(scores: FloatArray, probabilistic: bool) -> tuple[IntArray, FloatArray]:
    """Batch dispatch of ``scores[booking, driver]``: the driver per booking (or
    ``UNASSIGNED``) maximising the total of ``assignment_values``, and those values."""
    values = assignment_values(scores, probabilistic)
    return batch_assignment(values), values


def _seconds(values: npt.ArrayLike) -> FloatArray:
    """Times as float seconds: datetime64, datetime/Timestamp objects (tz-aware or not), or
    numbers already in seconds."""
    arr = np.asarray(values)
    if arr.dtype == object:
        return np.fromiter((v.timestamp() for v in arr), dtype=np.float64, count=len(arr))
    if np.issubdtype(arr.dtype, np.number):
        return arr.astype(np.float64)
    return arr.astype("datetime64[ms]").astype(np.int64) / 1000.0


def match_replay(
    booking_id: npt.ArrayLike,
    driver_id: npt.ArrayLike,
    requested_at: npt.ArrayLike,
    scores: npt.ArrayLike,
    p_accept: npt.ArrayLike,
    window_s: float = 30.0,
    probabilistic: bool = True,
) -> dict[str, float]:
    """Greedy versus batch matching over a holdout, in dispatch windows of ``window_s`` seconds.

    Bookings requested in the same window compete for the drivers they share as candidates;
    greedy serves them in request order, batch solves the window at once. Each policy's quality
    is the expected number of acceptances under the ground truth (sum of ``p_accept`` of the
    assigned pairs): no random draws, so the difference is not noise.

    Args:
        booking_id, driver_id: ids per candidate row.
        requested_at: request time per row: datetime64 (any unit), datetime or pandas
            Timestamp objects (tz-aware included, as ``Series.to_numpy()`` gives them), or
            seconds.
        scores: the model's score per row (what both policies maximise).
        p_accept: the true acceptance probability per row (what they are judged on).
        window_s: length of a dispatch window, seconds.
        probabilistic: whether ``scores`` are probabilities (the version's ``score_kind``);
            rank scores go through ``assignment_values`` as in the service.

    Returns:
        ``bookings``, ``windows``, ``contested_windows`` (windows where a driver is a candidate
        of two bookings), ``greedy_acceptance`` and ``batch_acceptance`` (expected acceptances
        per booking), ``batch_minus_greedy`` (their difference), ``greedy_assigned_share``,
        ``batch_assigned_share``.
    """
    b_codes, b_inverse = np.unique(np.asarray(booking_id, dtype=object), return_inverse=True)
    _, d_inverse = np.unique(np.asarray(driver_id, dtype=object), return_inverse=True)
    t = _seconds(requested_at)
    s = assignment_values(np.asarray(scores, dtype=np.float64), probabilistic)
    p = np.asarray(p_accept, dtype=np.float64)
    n_bookings = len(b_codes)
    if n_bookings == 0:
        return {"bookings": 0.0, "windows": 0.0}
    b_time = np.full(n_bookings, np.inf)
    np.minimum.at(b_time, b_inverse, t)
    window = np.floor((b_time - b_time.min()) / window_s).astype(np.int64)
    row_window = window[b_inverse]
    order = np.argsort(row_window, kind="stable")
    edges = np.flatnonzero(np.r_[True, row_window[order][1:] != row_window[order][:-1], True])
    greedy_total = batch_total = 0.0
    greedy_n = batch_n = contested = 0
    for lo, hi in itertools.pairwise(edges):
        rows = order[lo:hi]
        bk, bk_local = np.unique(b_inverse[rows], return_inverse=True)
        dr, dr_local = np.unique(d_inverse[rows], return_inverse=True)
        if len(dr) < len(rows):
            contested += 1
        # Bookings in request order (ties: booking id), as a greedy dispatcher sees them.
        arrival = np.lexsort((bk, b_time[bk]))
        rank = np.empty(len(bk), dtype=np.int64)
        rank[arrival] = np.arange(len(bk))
        score_m = np.full((len(bk), len(dr)), -np.inf)
        truth_m = np.zeros((len(bk), len(dr)))
        score_m[rank[bk_local], dr_local] = s[rows]
        truth_m[rank[bk_local], dr_local] = p[rows]
        g = greedy_assignment(score_m)
        h = batch_assignment(score_m)
        greedy_total += total_score(truth_m, g)
        batch_total += total_score(truth_m, h)
        greedy_n += int((g != UNASSIGNED).sum())
        batch_n += int((h != UNASSIGNED).sum())
    result = {
        "bookings": float(n_bookings),
        "windows": float(len(edges) - 1),
        "contested_windows": float(contested),
        "greedy_acceptance": greedy_total / n_bookings,
        "batch_acceptance": batch_total / n_bookings,
        "greedy_assigned_share": greedy_n / n_bookings,
        "batch_assigned_share": batch_n / n_bookings,
    }
    result["batch_minus_greedy"] = result["batch_acceptance"] - result["greedy_acceptance"]
    logger.info(
        "match replay: %d bookings in %d windows (%d contested): greedy %.4f, batch %.4f",
        n_bookings,
        len(edges) - 1,
        contested,
        result["greedy_acceptance"],
        result["batch_acceptance"],
    )
    return result
