"""Online features (one request) equal batch features (raw tables) for the same bookings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from matchmaking.errors import InputError
from matchmaking.features.batch import build_features, driver_snapshot
from matchmaking.features.core import build_matrix, estimate_eta_seconds
from matchmaking.features.geo import ROAD_CIRCUITY, haversine_km
from matchmaking.features.online import (
    DriverTable,
    OnlineBooking,
    OnlineCandidates,
    build_online_inputs,
    estimate_fare,
    estimate_trip_km,
    local_clock,
)
from matchmaking.markets import get_market
from matchmaking.schema import FEATURE_NAMES

CITY = get_market("jakarta")  # Asia/Jakarta, UTC+7
DAY = np.datetime64("2026-11-27", "D")  # local calendar day of every booking below
# UTC request times: 00:30, 08:15 and 23:50 local on DAY (the first and last cross UTC days).
REQUESTS = {
    "b-night": datetime(2026, 11, 26, 17, 30, tzinfo=UTC),
    "b-peak": datetime(2026, 11, 27, 1, 15, tzinfo=UTC),
    "b-late": datetime(2026, 11, 27, 16, 50, tzinfo=UTC),
}


def _raw(seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    drivers = pd.DataFrame(
        {
            "driver_id": [f"d-{i}" for i in range(12)],
            "home_lat": CITY.lat + rng.uniform(-0.1, 0.1, 12),
            "home_lng": CITY.lng + rng.uniform(-0.1, 0.1, 12),
            "rating": rng.uniform(3.5, 5.0, 12),
            "shift_start_min": rng.integers(0, 1440, 12).astype(np.int16),
            "shift_length_min": rng.integers(240, 720, 12).astype(np.int16),
        }
    )
    # 28-day history: offers on the days before DAY (some older than the window, some none).
    n_off = 300
    offers = pd.DataFrame(
        {
            "driver_id": rng.choice(drivers["driver_id"].to_numpy()[:10], n_off).astype(object),
            "day": DAY - rng.integers(1, 40, n_off).astype("timedelta64[D]"),
            "accepted": (rng.random(n_off) < 0.7).astype(np.float64),
            "eta_min": rng.uniform(1.0, 8.0, n_off),
        }
    )
    bookings, candidates = [], []
    for k, (bid, ts) in enumerate(REQUESTS.items()):
        plat, plng = CITY.lat + rng.uniform(-0.05, 0.05), CITY.lng + rng.uniform(-0.05, 0.05)
        bookings.append(
            {
                "booking_id": bid,
                "requested_at": pd.Timestamp(ts),
                "pickup_lat": plat,
                "pickup_lng": plng,
                "dropoff_lat": plat + rng.uniform(-0.06, 0.06),
                "dropoff_lng": plng + rng.uniform(-0.06, 0.06),
                "trip_km": rng.uniform(3, 15),
                "fare": float(rng.integers(20, 90) * 1000),
                "logging_policy": "uniform",
                "logging_policy_version": "1",
            }
        )
        chosen = rng.choice(12, 5, replace=False)
        # The last booking has no logged ETAs: both paths estimate them.
        etas = np.full(5, np.nan) if k == 2 else rng.uniform(60, 600, 5)
        order = np.argsort(np.where(np.isnan(etas), 0, etas), kind="stable")
        for j, d in enumerate(chosen):
            candidates.append(
                {
                    "booking_id": bid,
                    "driver_id": f"d-{d}",
                    "requested_at": pd.Timestamp(ts),
                    "driver_lat": plat + rng.uniform(-0.02, 0.02),
                    "driver_lng": plng + rng.uniform(-0.02, 0.02),
                    "eta_seconds": etas[j],
                    "eta_rank": int(np.flatnonzero(order == j)[0]) + 1,
                    "offered": False,
                    "accepted": None,
                    "offer_order": 0,
                    "first_offer_propensity": 0.2,
                    "offer_propensity": np.nan,
                }
            )
    return pd.DataFrame(bookings), pd.DataFrame(candidates), drivers, offers


def _online(
    bookings: pd.DataFrame, candidates: pd.DataFrame, drivers: pd.DataFrame, table: DriverTable
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Features of the same rows built the online way (as the service would from a request)."""
    ids = list(bookings["booking_id"])
    online_bookings = [
        OnlineBooking(
            pickup_lat=float(r.pickup_lat),
            pickup_lng=float(r.pickup_lng),
            dropoff_lat=float(r.dropoff_lat),
            dropoff_lng=float(r.dropoff_lng),
            requested_at=r.requested_at.to_pydatetime(),
            trip_km=float(r.trip_km),
            fare=float(r.fare),
        )
        for r in bookings.itertuples()
    ]
    rows = candidates.merge(drivers, on="driver_id")
    cands = OnlineCandidates(
        booking=np.array([ids.index(b) for b in rows["booking_id"]], dtype=np.int64),
        driver_id=list(rows["driver_id"]),
        lat=rows["driver_lat"].to_numpy(np.float64),
        lng=rows["driver_lng"].to_numpy(np.float64),
        rating=rows["rating"].to_numpy(np.float64),
        home_lat=rows["home_lat"].to_numpy(np.float64),
        home_lng=rows["home_lng"].to_numpy(np.float64),
        eta_seconds=rows["eta_seconds"].to_numpy(np.float64),
    )
    matrix = build_matrix(build_online_inputs(CITY, online_bookings, cands, table))
    return matrix, list(zip(rows["booking_id"], rows["driver_id"], strict=True))


def _table(snapshot: pd.DataFrame) -> DriverTable:
    return DriverTable(
        list(snapshot["driver_id"]),
        snapshot["shift_start_min"].to_numpy(np.float64),
        snapshot["shift_length_min"].to_numpy(np.float64),
        snapshot["offers_28d"].to_numpy(np.float64),
        snapshot["accepts_28d"].to_numpy(np.float64),
        snapshot["offer_eta_sum_28d"].to_numpy(np.float64),
    )


def test_online_features_equal_batch_features() -> None:
    bookings, candidates, drivers, offers = _raw()
    batch = build_features(
        bookings, candidates, drivers, offers, CITY.tz, np.asarray(CITY.speed_kmh)
    )
    table = _table(driver_snapshot(drivers, offers, DAY))
    online, keys = _online(bookings, candidates, drivers, table)

    expected = batch.set_index(["booking_id", "driver_id"]).loc[keys, list(FEATURE_NAMES)]
    assert len(keys) == len(batch) == 15
    np.testing.assert_allclose(online, expected.to_numpy(np.float64), rtol=0, atol=1e-9)
    # The comparison covers what matters: history, shifts, local time across UTC days.
    assert expected["drv_offers_28d"].gt(0).any()
    assert set(expected["hour_local"]) == {0.0, 8.0, 23.0}


def test_unknown_driver_gets_new_driver_defaults() -> None:
    bookings, candidates, drivers, offers = _raw()
    known = _table(driver_snapshot(drivers, offers, DAY))
    online_known, _ = _online(bookings, candidates, drivers, known)
    online_empty, _ = _online(bookings, candidates, drivers, DriverTable.empty())
    col = {name: j for j, name in enumerate(FEATURE_NAMES)}
    assert np.all(online_empty[:, col["drv_offers_28d"]] == 0)
    assert np.allclose(online_empty[:, col["drv_accept_rate_28d"]], 0.8)  # the prior
    assert np.all(np.isnan(online_empty[:, col["minutes_to_shift_end"]]))
    assert np.all(np.isnan(online_empty[:, col["drv_offer_eta_28d"]]))
    history = {"drv_offers_28d", "drv_accept_rate_28d", "drv_offer_eta_28d"}
    others = [j for n, j in col.items() if n not in history]
    others.remove(col["minutes_to_shift_end"])
    np.testing.assert_array_equal(online_empty[:, others], online_known[:, others])


def test_missing_trip_km_and_fare_are_estimated_like_the_world() -> None:
    start = datetime(2026, 11, 27, 8, 15, tzinfo=UTC) + timedelta(hours=-7)  # 08:15 local
    booking = OnlineBooking(-6.20, 106.82, -6.25, 106.85, start)
    cands = OnlineCandidates(
        booking=np.zeros(1, dtype=np.int64),
        driver_id=["nobody"],
        lat=np.array([-6.19]),
        lng=np.array([106.82]),
        rating=np.array([4.5]),
        home_lat=np.array([-6.3]),
        home_lng=np.array([106.9]),
        eta_seconds=np.array([np.nan]),
    )
    x = build_online_inputs(CITY, [booking], cands, DriverTable.empty())
    straight = haversine_km(*(np.array([v]) for v in (-6.20, 106.82, -6.25, 106.85)))[0]
    assert x.trip_km[0] == pytest.approx(straight * ROAD_CIRCUITY)
    assert x.trip_km[0] == pytest.approx(estimate_trip_km(-6.20, 106.82, -6.25, 106.85))
    speed = CITY.speed_at(8)
    fare = CITY.fare_base + CITY.fare_per_km * x.trip_km[0]
    fare += CITY.fare_per_min * x.trip_km[0] / speed * 60
    assert x.fare[0] == pytest.approx(fare)
    assert estimate_fare(CITY, x.trip_km[0], 8) == pytest.approx(fare)
    assert x.speed_kmh[0] == speed and x.local_minute[0] == 8 * 60 + 15
    eta = build_matrix(x)[0, FEATURE_NAMES.index("eta_min")] * 60
    pickup_km = haversine_km(*(np.array([v]) for v in (-6.19, 106.82, -6.20, 106.82)))
    assert eta == pytest.approx(estimate_eta_seconds(pickup_km, np.array([speed]))[0])


def test_naive_timestamp_is_an_input_error() -> None:
    with pytest.raises(InputError, match="UTC offset"):
        local_clock(datetime(2026, 11, 27, 8, 15), CITY.tz)
