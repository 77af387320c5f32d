"""An assignment oracle independent of the code under test: every partial assignment tried."""

from __future__ import annotations

import itertools

import numpy as np

from matchmaking.evaluation.matching import UNASSIGNED


def brute_force_best(scores: np.ndarray) -> float:
    """The best total over every partial assignment (each driver at most once; a non-finite
    score is not a candidate pair). Exponential: for a handful of bookings and drivers only."""
    n_b, n_d = scores.shape
    best = 0.0
    options = [[UNASSIGNED, *range(n_d)]] * n_b
    for combo in itertools.product(*options):
        used = [j for j in combo if j != UNASSIGNED]
        if len(used) != len(set(used)):
            continue
        if any(j != UNASSIGNED and not np.isfinite(scores[i, j]) for i, j in enumerate(combo)):
            continue
        best = max(best, sum(scores[i, j] for i, j in enumerate(combo) if j != UNASSIGNED))
    return float(best)
