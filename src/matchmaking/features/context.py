"""City-level context features (``schema.CONTEXT_FEATURES``) from a ``Market``.

A country model learns from the pooled rows of several cities, so it needs to know which kind
of city a row comes from: its size (the catalogue's daily volume), its speed profile and its
tariff (a fare in local currency means something only next to its city's tariff). The
values come from the market catalogue, never from the data, so training (the pooled rows of
each city) and serving (the request's city) compute them the same way, also for a new market
that has no data yet. City models do not take them (``schema.FEATURE_NAMES`` is unchanged).

``model_input`` is the one way to turn feature rows into the matrix of a given model: the
columns its booster names, the context columns filled from the market when it asks for them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from matchmaking.markets import Market
from matchmaking.schema import CONTEXT_FEATURE_NAMES, FEATURE_NAMES

if TYPE_CHECKING:  # the scoring image has no pandas: only offline callers pass frames
    import pandas as pd

FloatArray = npt.NDArray[np.float64]

_HOUR = FEATURE_NAMES.index("hour_local")
_FARE = FEATURE_NAMES.index("fare")
#: The reference trip of ``reference_fare``: road km, driven at the city's off-peak speed.
REFERENCE_TRIP_KM = 8.0


def reference_fare(market: Market) -> float:
    """The city's tariff for the reference trip: base + per km + per minute at off-peak speed.
    Fares are in local currency and tariffs differ by city, so a fare means something only
    relative to its city's: the pooled model sees both (``fare_vs_city_reference``)."""
    minutes = REFERENCE_TRIP_KM / market.speeds.offpeak * 60.0
    t = market.tariff
    return t.base + t.per_km * REFERENCE_TRIP_KM + t.per_min * minutes


def context_columns(market: Market, hour_local: FloatArray, fare: FloatArray) -> FloatArray:
    """The context features of ``market`` for rows at local hours ``hour_local`` quoting
    ``fare``: one row per element, columns in ``CONTEXT_FEATURE_NAMES`` order."""
    hours = np.asarray(hour_local, dtype=np.float64)
    reference = reference_fare(market)
    profile = np.asarray(market.speed_kmh, dtype=np.float64)
    index = np.mod(np.nan_to_num(hours, nan=12.0).astype(np.int64), 24)
    constant = {
        "city_log10_daily_bookings": math.log10(market.daily_bookings),
        "city_radius_km": market.radius_km,
        "city_speed_peak_kmh": market.speeds.peak,
        "city_speed_offpeak_kmh": market.speeds.offpeak,
        "city_speed_night_kmh": market.speeds.night,
        "city_reference_fare": reference,
    }
    per_row = {
        "city_speed_now_kmh": profile[index],
        "fare_vs_city_reference": np.asarray(fare, dtype=np.float64) / reference,
    }
    out = np.empty((len(hours), len(CONTEXT_FEATURE_NAMES)), dtype=np.float64)
    for j, name in enumerate(CONTEXT_FEATURE_NAMES):
        out[:, j] = per_row[name] if name in per_row else constant[name]
    return out


def with_context(matrix: FloatArray, market: Market) -> FloatArray:
    """``matrix`` (``FEATURE_NAMES`` columns) with the context columns of ``market`` appended:
    the input of a country model (``schema.COUNTRY_FEATURE_NAMES``)."""
    extra = context_columns(market, matrix[:, _HOUR], matrix[:, _FARE])
    return np.hstack([matrix, extra.astype(matrix.dtype, copy=False)])


def add_context(rows: pd.DataFrame, market: Market) -> pd.DataFrame:
    """A copy of feature ``rows`` with the context columns of ``market`` added."""
    extra = context_columns(
        market,
        rows["hour_local"].to_numpy(dtype=np.float64),
        rows["fare"].to_numpy(dtype=np.float64),
    )
    out = rows.copy()
    for j, name in enumerate(CONTEXT_FEATURE_NAMES):
        out[name] = extra[:, j]
    return out


def model_input(rows: pd.DataFrame, feature_names: Sequence[str], market: Market) -> FloatArray:
    """The matrix a model with input ``feature_names`` scores for feature ``rows`` of
    ``market``'s city: the rows' columns, with the context ones computed when asked for."""
    names = list(feature_names)
    if any(n in CONTEXT_FEATURE_NAMES for n in names) and not set(CONTEXT_FEATURE_NAMES) <= set(
        rows.columns
    ):
        rows = add_context(rows, market)
    return rows[names].to_numpy(dtype=np.float64)
