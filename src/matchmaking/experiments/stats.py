"""Intervals for proportions and their difference (pure functions).

A proportion's interval is Wilson's score interval; the difference of two independent
proportions uses Newcombe's hybrid score interval (Newcombe 1998, method 10), built from the
two Wilson intervals. Both keep their coverage near the nominal level for proportions close to
0 or 1 and for small samples, where the plain normal (Wald) interval is too narrow; for large
samples the three agree.
"""

from __future__ import annotations

import math

from scipy.stats import norm

#: What the report and the online gate call the interval of the difference.
DIFFERENCE_METHOD = "newcombe-wilson"


def z_value(confidence: float) -> float:
    """The two-sided normal quantile of ``confidence`` (1.96 for 0.95)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return float(norm.ppf(0.5 + confidence / 2.0))


def wilson(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Wilson's score interval of ``successes / trials``; (NaN, NaN) without trials."""
    if trials <= 0:
        return math.nan, math.nan
    z = z_value(confidence)
    p = successes / trials
    z2n = z * z / trials
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z * math.sqrt(p * (1.0 - p) / trials + z2n / (4.0 * trials)) / (1.0 + z2n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int, confidence: float
) -> tuple[float, float, float]:
    """``p_a - p_b`` with Newcombe's hybrid score interval: (difference, low, high).

    NaN everywhere when either side has no trials.
    """
    if trials_a <= 0 or trials_b <= 0:
        return math.nan, math.nan, math.nan
    pa, pb = successes_a / trials_a, successes_b / trials_b
    la, ua = wilson(successes_a, trials_a, confidence)
    lb, ub = wilson(successes_b, trials_b, confidence)
    d = pa - pb
    low = d - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2)
    high = d + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
    return d, low, high


def bookings_needed(p_a: float, p_b: float, distance: float, confidence: float) -> int | None:
    """Roughly how many bookings per arm make the interval's half-width ``distance`` (normal
    approximation, equal arms); None when it cannot be said (no distance, unknown rates)."""
    if not (math.isfinite(p_a) and math.isfinite(p_b)) or not distance > 0:
        return None
    z = z_value(confidence)
    variance = p_a * (1.0 - p_a) + p_b * (1.0 - p_b)
    return max(1, math.ceil(z * z * variance / (distance * distance)))
