"""The hidden ground truth: how likely an offered driver accepts, and a rider cancels.

Only the world generator calls these functions. Their outputs go to the ``truth/`` tables,
which evaluation reads to score policies against the oracle; features never read them.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# Calibrated so that offers made by the historical dispatcher (world.dispatch) are accepted
# 75-85% of the time (see tests/data/test_realism.py).
ACCEPT_INTERCEPT = 3.85
ETA_PER_MIN = -0.42  # each minute of pickup ETA lowers the odds
RATING_SLOPE = 1.1  # conscientious (high-rated) drivers accept more
FARE_SLOPE = 0.55  # log fare relative to the city's median fare
HOME_BASE = 0.10  # home-heading weight during most of the shift ...
HOME_PEAK = 0.45  # ... rising to this extra weight per km as the shift ends
HOME_DECAY_MIN = 75.0
NIGHT_PENALTY = -0.45  # 00:00-05:59 local


def _sigmoid(z: FloatArray) -> FloatArray:
    return 1.0 / (1.0 + np.exp(-z))


def accept_probability(
    eta_min: FloatArray,
    rating: FloatArray,
    home_gain_km: FloatArray,
    minutes_to_shift_end: FloatArray,
    fare_ratio: FloatArray,
    propensity: FloatArray,
    hour_local: npt.NDArray[np.integer],
) -> FloatArray:
    """True probability that a driver accepts an offer.

    Args:
        eta_min: true pickup ETA in minutes.
        rating: driver rating (1-5).
        home_gain_km: km the trip brings the driver closer to home (negative: away).
        minutes_to_shift_end: minutes left in the shift (negative after its end).
        fare_ratio: fare divided by the city's median fare.
        propensity: the driver's hidden acceptance propensity (log-odds offset).
        hour_local: local hour of the request.
    """
    near_end = np.exp(-np.clip(minutes_to_shift_end, 0.0, None) / HOME_DECAY_MIN)
    home_weight = HOME_BASE + HOME_PEAK * near_end
    gain = np.clip(home_gain_km, -12.0, 12.0)
    z = (
        ACCEPT_INTERCEPT
        + ETA_PER_MIN * eta_min
        + RATING_SLOPE * (rating - 4.8)
        + FARE_SLOPE * np.log(np.clip(fare_ratio, 0.05, None))
        + home_weight * gain
        + propensity
        + np.where(hour_local < 6, NIGHT_PENALTY, 0.0)
    )
    return _sigmoid(z)


def cancel_probability(eta_min: FloatArray) -> FloatArray:
    """True probability that the rider cancels after a driver accepted; grows with pickup ETA."""
    return _sigmoid(-3.3 + 0.33 * eta_min)
