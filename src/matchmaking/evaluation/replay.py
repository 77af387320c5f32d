"""The dispatch replay: each policy picks one driver per held-out booking; outcomes are drawn
from the ground truth with common random numbers, so policies face the same luck.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Outcomes:
    """Per candidate row: would the driver accept, would the trip complete (one fixed draw)."""

    accept: npt.NDArray[np.bool_]
    complete: npt.NDArray[np.bool_]


def draw_outcomes(p_accept: FloatArray, p_cancel: FloatArray, seed: int) -> Outcomes:
    rng = np.random.default_rng(seed)
    u_accept = rng.random(len(p_accept))
    u_cancel = rng.random(len(p_accept))
    accept = u_accept < p_accept
    return Outcomes(accept=accept, complete=accept & (u_cancel >= p_cancel))


def pick_best(group: IntArray, scores: FloatArray) -> IntArray:
    """Row index of the highest score in each group (ties: the first row)."""
    n = len(group)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # Sort by (group, -score, position) and take the first row of each group.
    order = np.lexsort((np.arange(n), -scores, group))
    first = np.r_[True, group[order][1:] != group[order][:-1]]
    return order[first].astype(np.int64)


def replay(
    group: IntArray,
    scores: FloatArray,
    outcomes: Outcomes,
    eta_min: FloatArray,
    home_gain_km: FloatArray,
) -> dict[str, float]:
    """Acceptance, completion, pickup ETA and home-heading share when each booking gets the
    policy's top driver."""
    picks = pick_best(group, scores)
    accepted = outcomes.accept[picks]
    eta = eta_min[picks][accepted]
    return {
        "acceptance": float(accepted.mean()) if len(picks) else float("nan"),
        "completion": float(outcomes.complete[picks].mean()) if len(picks) else float("nan"),
        "pickup_eta_p50_min": float(np.median(eta)) if len(eta) else float("nan"),
        "pickup_eta_p90_min": float(np.quantile(eta, 0.9)) if len(eta) else float("nan"),
        "heading_home_share": float((home_gain_km[picks] > 0).mean()) if len(picks) else 0.0,
        "bookings": float(len(picks)),
    }
