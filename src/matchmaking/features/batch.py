"""Batch features: raw bookings + candidates + driver roster -> one row per candidate."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd

from matchmaking.features.core import CandidateInputs, build_matrix
from matchmaking.features.history import window_sums
from matchmaking.schema import FEATURE_NAMES, LOGGED_POLICY_COLUMNS

# Columns kept beside the features in the published dataset (with ``eta_seconds`` and the
# logging policy's columns, schema.LOGGED_POLICY_COLUMNS, which evaluation reads).
KEY_COLUMNS = ("booking_id", "driver_id", "requested_at", "day", "offered", "accepted")
BOOKING_COLUMNS = (
    "booking_id",
    "requested_at",
    "pickup_lat",
    "pickup_lng",
    "dropoff_lat",
    "dropoff_lng",
    "trip_km",
    "fare",
    "logging_policy",
    "logging_policy_version",
)
DRIVER_COLUMNS = (
    "driver_id",
    "home_lat",
    "home_lng",
    "rating",
    "shift_start_min",
    "shift_length_min",
)


def local_time(
    requested_at: pd.Series, tz: str
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.datetime64]]:
    """Local minute of day, day of week (Monday = 0) and local calendar day of UTC timestamps."""
    local = requested_at.dt.tz_convert(tz)
    minute = (local.dt.hour * 60 + local.dt.minute).to_numpy(dtype=np.float64)
    dow = local.dt.dayofweek.to_numpy(dtype=np.float64)
    day = local.dt.tz_localize(None).dt.floor("D").to_numpy().astype("datetime64[D]")
    return minute, dow, day


def offer_log(candidates: pd.DataFrame, tz: str) -> pd.DataFrame:
    """The offers (driver, local day, accepted) that history aggregates are computed from."""
    offered = candidates.loc[
        candidates["offered"], ["driver_id", "requested_at", "accepted", "eta_seconds"]
    ]
    _, _, day = local_time(offered["requested_at"], tz)
    return pd.DataFrame(
        {
            "driver_id": offered["driver_id"].to_numpy(dtype=object),
            "day": day,
            "accepted": offered["accepted"].astype("float64").to_numpy(),
            "eta_min": offered["eta_seconds"].to_numpy(dtype=np.float64) / 60.0,
        }
    )


HISTORY_VALUES = ("accepted", "eta_min")
# A day's per-driver summary: what history needs of that day (``daily_summary``).
SUMMARY_COLUMNS = ("driver_id", "day", "offers", *HISTORY_VALUES)


def daily_summary(offers: pd.DataFrame) -> pd.DataFrame:
    """Per (driver, local day): the number of offers, acceptances and the sum of offered ETA
    minutes, in ``SUMMARY_COLUMNS``.

    The sums are added in the order of ``offers`` (``np.add.at``), the order in which
    ``window_sums`` adds an offer log's values, so history computed from the summaries of the
    days before a row equals, bit for bit, history computed from the offers themselves.
    """
    driver_codes, driver_ids = pd.factorize(offers["driver_id"].to_numpy(dtype=object))
    day_codes, day_values = pd.factorize(offers["day"].to_numpy().astype("datetime64[D]"))
    codes, pairs = pd.factorize(driver_codes.astype(np.int64) * max(len(day_values), 1) + day_codes)
    totals = np.zeros((len(pairs), 1 + len(HISTORY_VALUES)))
    np.add.at(totals[:, 0], codes, 1.0)
    for j, name in enumerate(HISTORY_VALUES):
        np.add.at(totals[:, 1 + j], codes, offers[name].to_numpy(dtype=np.float64))
    pairs = np.asarray(pairs, dtype=np.int64)
    return pd.DataFrame(
        {
            "driver_id": np.asarray(driver_ids, dtype=object)[pairs // max(len(day_values), 1)],
            "day": np.asarray(day_values).astype("datetime64[D]")[pairs % max(len(day_values), 1)],
            "offers": totals[:, 0],
            **{name: totals[:, 1 + j] for j, name in enumerate(HISTORY_VALUES)},
        }
    )


def _history(
    offers: pd.DataFrame, driver_id: npt.NDArray[np.object_], day: npt.NDArray[np.datetime64]
) -> npt.NDArray[np.float64]:
    """Columns: offers, accepts, sum of offered ETA minutes (28 days before ``day``).

    ``offers`` is an offer log (``offer_log``, one row per offer) or daily summaries
    (``daily_summary``, with an ``offers`` count per row): the same numbers either way.
    """
    if "offers" not in offers:
        return window_sums(
            offers["driver_id"].to_numpy(dtype=object),
            offers["day"].to_numpy(),
            offers[list(HISTORY_VALUES)].to_numpy(dtype=np.float64),
            driver_id,
            day,
        )
    sums = window_sums(
        offers["driver_id"].to_numpy(dtype=object),
        offers["day"].to_numpy(),
        offers[["offers", *HISTORY_VALUES]].to_numpy(dtype=np.float64),
        driver_id,
        day,
    )
    return sums[:, 1:]


def build_features(
    bookings: pd.DataFrame,
    candidates: pd.DataFrame,
    drivers: pd.DataFrame,
    offers: pd.DataFrame,
    tz: str,
    speed_by_hour: npt.NDArray[np.float64],
) -> pd.DataFrame:
    """Join raw tables and compute the contract's features for every candidate row.

    Args:
        bookings, candidates, drivers: validated raw tables (schema.BOOKINGS, CANDIDATES, DRIVERS).
        offers: the offer log from ``offer_log`` covering at least the 28 days before the
            earliest booking (point-in-time history only reads days before each row's day).
        tz: the city's IANA time zone.
        speed_by_hour: the city's road speed (km/h) by local hour, 24 values.

    Returns:
        One row per candidate: KEY_COLUMNS, ``eta_seconds``, the logging policy's columns
        (``schema.LOGGED_POLICY_COLUMNS``: never features) and the features in contract order.
    """
    rows = candidates.merge(
        bookings[list(BOOKING_COLUMNS)], on="booking_id", how="inner", suffixes=("", "_b")
    )
    rows = rows.drop(columns=["requested_at_b"]).merge(
        drivers[list(DRIVER_COLUMNS)], on="driver_id", how="inner"
    )
    rows = rows.sort_values(["requested_at", "booking_id", "eta_rank"], kind="stable")
    rows = rows.reset_index(drop=True)
    _, _, day = local_time(rows["requested_at"], tz)
    history = _history(offers, rows["driver_id"].to_numpy(dtype=object), day)
    return feature_frame(rows, history, tz, speed_by_hour)


def feature_frame(
    rows: pd.DataFrame,
    history: npt.NDArray[np.float64],
    tz: str,
    speed_by_hour: npt.NDArray[np.float64],
) -> pd.DataFrame:
    """The published rows of joined, ordered candidate rows: KEY_COLUMNS, ``eta_seconds`` and
    the features in contract order (``build_matrix``, the function serving calls too).

    Args:
        rows: candidates joined with their booking (BOOKING_COLUMNS) and driver
            (DRIVER_COLUMNS), whole bookings only (ETA rank and gap are per booking).
        history: per row, the driver's offers, acceptances and offered ETA minutes in the 28
            days before the row's local day.
    """
    minute, dow, day = local_time(rows["requested_at"], tz)
    group, _ = pd.factorize(rows["booking_id"])

    def col(name: str) -> npt.NDArray[np.float64]:
        return rows[name].to_numpy(dtype=np.float64)

    inputs = CandidateInputs(
        group=group.astype(np.int64),
        driver_lat=col("driver_lat"),
        driver_lng=col("driver_lng"),
        pickup_lat=col("pickup_lat"),
        pickup_lng=col("pickup_lng"),
        dropoff_lat=col("dropoff_lat"),
        dropoff_lng=col("dropoff_lng"),
        home_lat=col("home_lat"),
        home_lng=col("home_lng"),
        rating=col("rating"),
        eta_seconds=col("eta_seconds"),
        speed_kmh=np.asarray(speed_by_hour, dtype=np.float64)[(minute // 60).astype(np.int64)],
        local_minute=minute,
        day_of_week=dow,
        shift_start_min=col("shift_start_min"),
        shift_length_min=col("shift_length_min"),
        trip_km=col("trip_km"),
        fare=col("fare"),
        drv_offers_28d=history[:, 0],
        drv_accepts_28d=history[:, 1],
        drv_offer_eta_sum_28d=history[:, 2],
    )
    matrix = build_matrix(inputs)
    out = pd.DataFrame(
        {
            # The ids as strings without a detour through Python objects.
            "booking_id": rows["booking_id"].astype("str").array,
            "driver_id": rows["driver_id"].astype("str").array,
            "requested_at": rows["requested_at"],
            "day": day,
            "offered": rows["offered"].to_numpy(dtype=bool),
            "accepted": rows["accepted"].astype("boolean"),
            "eta_seconds": col("eta_seconds"),
            # offer_order, propensities (NaN offer_propensity when not offered), policy.
            **{name: rows[name].to_numpy() for name in LOGGED_POLICY_COLUMNS},
        }
    )
    features = pd.DataFrame(matrix, columns=list(FEATURE_NAMES))
    return pd.concat([out, features], axis=1)


def driver_snapshot(
    drivers: pd.DataFrame, offers: pd.DataFrame, as_of: np.datetime64
) -> pd.DataFrame:
    """The driver feature table valid on day ``as_of``: shift and 28-day history per driver
    (``offers``: an offer log or daily summaries, see ``_history``).

    Serving joins it by driver id; a driver missing from it gets no history (0 offers) and an
    unknown shift (NaN), exactly as a brand-new driver does in training.
    """
    ids = drivers["driver_id"].to_numpy(dtype=object)
    query_day = np.full(len(ids), as_of.astype("datetime64[D]"))
    history = _history(offers, ids, query_day)
    return pd.DataFrame(
        {
            "driver_id": ids,
            "shift_start_min": drivers["shift_start_min"].to_numpy(dtype=np.float64),
            "shift_length_min": drivers["shift_length_min"].to_numpy(dtype=np.float64),
            "offers_28d": history[:, 0],
            "accepts_28d": history[:, 1],
            "offer_eta_sum_28d": history[:, 2],
        }
    )
