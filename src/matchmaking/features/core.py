"""The feature computation itself: one function, called by batch processing and by serving.

Inputs are flat numpy arrays, one element per candidate row (booking-level values repeated),
so that a 10M-row training set and a 50-candidate request take exactly the same path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from matchmaking.features.geo import ROAD_CIRCUITY, direction_cosine, haversine_km
from matchmaking.schema import FEATURE_NAMES

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Smoothing of the driver acceptance rate: a driver with no history gets PRIOR_RATE.
PRIOR_RATE = 0.8
PRIOR_WEIGHT = 5.0
MINUTES_PER_DAY = 1440


@dataclass(frozen=True)
class CandidateInputs:
    """Everything the features need, one element per candidate row.

    Attributes:
        group: booking index of each row (rows of one booking share a value).
        eta_seconds: logged or requested ETA; NaN where unknown (then estimated).
        speed_kmh: the city's road speed at the request's local hour (for ETA estimation).
        local_minute: minutes after local midnight of the request (0-1439).
        day_of_week: local day of week of the request, Monday = 0.
        shift_start_min, shift_length_min: the driver's declared shift; NaN when unknown.
        drv_offers_28d, drv_accepts_28d, drv_offer_eta_sum_28d: the driver's offers,
            acceptances and the sum of those offers' ETAs (minutes) in the 28 days before the
            request's day; 0 for an unknown driver.
    """

    group: IntArray
    driver_lat: FloatArray
    driver_lng: FloatArray
    pickup_lat: FloatArray
    pickup_lng: FloatArray
    dropoff_lat: FloatArray
    dropoff_lng: FloatArray
    home_lat: FloatArray
    home_lng: FloatArray
    rating: FloatArray
    eta_seconds: FloatArray
    speed_kmh: FloatArray
    local_minute: FloatArray
    day_of_week: FloatArray
    shift_start_min: FloatArray
    shift_length_min: FloatArray
    trip_km: FloatArray
    fare: FloatArray
    drv_offers_28d: FloatArray
    drv_accepts_28d: FloatArray
    drv_offer_eta_sum_28d: FloatArray


# Mean time to get moving and reach the rider's door on top of driving (the world's lognormal
# overhead has a median of 25 s and a mean of about 28 s).
PICKUP_OVERHEAD_SECONDS = 28.0


def estimate_eta_seconds(pickup_km: FloatArray, speed_kmh: FloatArray) -> FloatArray:
    """ETA as the world estimates it: straight line x road circuity / the hour's speed, plus
    the mean pickup overhead."""
    drive = pickup_km * ROAD_CIRCUITY / np.maximum(speed_kmh, 1.0) * 3600.0
    return drive + PICKUP_OVERHEAD_SECONDS


def minutes_to_shift_end(
    local_minute: FloatArray, shift_start_min: FloatArray, shift_length_min: FloatArray
) -> FloatArray:
    """Minutes left in the shift at ``local_minute`` (negative once over; NaN if unknown)."""
    elapsed = np.mod(local_minute - shift_start_min, MINUTES_PER_DAY)
    return shift_length_min - elapsed


def smoothed_rate(accepts: FloatArray, offers: FloatArray) -> FloatArray:
    """Acceptance rate shrunk towards PRIOR_RATE for drivers with few offers."""
    return (accepts + PRIOR_RATE * PRIOR_WEIGHT) / (offers + PRIOR_WEIGHT)


def mean_or_nan(total: FloatArray, count: FloatArray) -> FloatArray:
    """``total / count``, NaN (missing for LightGBM) where the count is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1.0), np.nan)


def group_rank_and_gap(group: IntArray, values: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Per group: the 1-based rank of each value (ties by position) and its gap to the minimum."""
    n = len(values)
    if n == 0:
        return np.empty(0), np.empty(0)
    if group[0] == group[-1] and (group == group[0]).all():  # one booking: the online case
        rank = np.empty(n)
        rank[np.argsort(values, kind="stable")] = np.arange(1, n + 1)
        return rank, values - values.min()
    order = np.lexsort((np.arange(n), values, group))
    g_sorted = group[order]
    starts = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
    start_of_row = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.empty(n)
    rank[order] = np.arange(n) - start_of_row + 1
    minimum = np.empty(n)
    minimum[order] = values[order][start_of_row]
    return rank, values - minimum


def build_matrix(x: CandidateInputs) -> FloatArray:
    """The model input: one row per candidate, columns in ``schema.FEATURE_NAMES`` order."""
    # The three distances in one vectorised call (a third of the ufunc overhead per request):
    # driver -> pickup, driver -> home, dropoff -> home.
    n = len(x.group)
    km = haversine_km(
        np.concatenate((x.driver_lat, x.driver_lat, x.dropoff_lat)),
        np.concatenate((x.driver_lng, x.driver_lng, x.dropoff_lng)),
        np.concatenate((x.pickup_lat, x.home_lat, x.home_lat)),
        np.concatenate((x.pickup_lng, x.home_lng, x.home_lng)),
    )
    pickup_km = km[:n]
    eta_seconds = np.where(
        np.isnan(x.eta_seconds), estimate_eta_seconds(pickup_km, x.speed_kmh), x.eta_seconds
    )
    eta_min = eta_seconds / 60.0
    eta_rank, eta_gap_min = group_rank_and_gap(x.group, eta_min)
    home_gain_km = km[n : 2 * n] - km[2 * n :]
    home_cos = direction_cosine(
        x.pickup_lat, x.pickup_lng, x.dropoff_lat, x.dropoff_lng, x.home_lat, x.home_lng
    )
    columns = {
        "eta_min": eta_min,
        "eta_gap_min": eta_gap_min,
        "eta_rank": eta_rank,
        "pickup_km": pickup_km,
        "rating": x.rating,
        "home_gain_km": home_gain_km,
        "home_cos": home_cos,
        "minutes_to_shift_end": minutes_to_shift_end(
            x.local_minute, x.shift_start_min, x.shift_length_min
        ),
        "hour_local": np.floor(x.local_minute / 60.0),
        "day_of_week": x.day_of_week.astype(np.float64),
        "trip_km": x.trip_km,
        "fare": x.fare,
        "drv_offers_28d": x.drv_offers_28d,
        "drv_accept_rate_28d": smoothed_rate(x.drv_accepts_28d, x.drv_offers_28d),
        "drv_offer_eta_28d": mean_or_nan(x.drv_offer_eta_sum_28d, x.drv_offers_28d),
    }
    out = np.empty((len(x.group), len(FEATURE_NAMES)), dtype=np.float64)
    for j, name in enumerate(FEATURE_NAMES):
        out[:, j] = columns[name]
    return out
