"""Online features: one request (bookings + candidate drivers) -> ``CandidateInputs``.

The scoring service calls this, then ``core.build_matrix``: the very function the batch path
(``features.batch``) uses, so training and serving compute features the same way. What a
request does not carry is filled as the batch path fills it:

* local minute and day of week: the request time in the city's time zone;
* road speed: the city's profile at that local hour (used to estimate a missing ETA);
* trip_km and fare, when absent: estimated as the world quotes them (straight line x road
  circuity; base + per km + per minute at the hour's speed), without the world's noise;
* driver shift and 28-day history: the model's driver table (``DriverTable``), published with
  the model; an unknown driver gets 0 offers and an unknown (NaN) shift, like a new driver in
  training.

No pandas here: a request is a handful of Python floats turned into numpy arrays.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from matchmaking.errors import InputError
from matchmaking.features.core import CandidateInputs, FloatArray, IntArray
from matchmaking.features.geo import ROAD_CIRCUITY, haversine_km_scalar
from matchmaking.markets import Market

logger = logging.getLogger(__name__)

DRIVER_TABLE_COLUMNS = (
    "driver_id",
    "shift_start_min",
    "shift_length_min",
    "offers_28d",
    "accepts_28d",
    "offer_eta_sum_28d",
)


@dataclass(frozen=True)
class OnlineBooking:
    """One booking as a request describes it (coordinates in degrees, aware timestamp)."""

    pickup_lat: float
    pickup_lng: float
    dropoff_lat: float
    dropoff_lng: float
    requested_at: datetime
    trip_km: float | None = None
    fare: float | None = None


@dataclass(frozen=True)
class OnlineCandidates:
    """Candidate rows, one element per (booking, driver) pair.

    Attributes:
        booking: index into the request's bookings of each row.
        eta_seconds: the dispatcher's ETA, NaN where the request gave none (then estimated).
    """

    booking: IntArray
    driver_id: Sequence[str]
    lat: FloatArray
    lng: FloatArray
    rating: FloatArray
    home_lat: FloatArray
    home_lng: FloatArray
    eta_seconds: FloatArray


class DriverTable:
    """Driver shift and 28-day history by driver id, as published with a model version."""

    def __init__(
        self,
        driver_id: Sequence[str],
        shift_start_min: FloatArray,
        shift_length_min: FloatArray,
        offers_28d: FloatArray,
        accepts_28d: FloatArray,
        offer_eta_sum_28d: FloatArray,
    ) -> None:
        self.index: dict[str, int] = {d: i for i, d in enumerate(driver_id)}
        # One extra row at the end: the unknown driver (no history, unknown shift).
        self.shift_start = np.append(np.asarray(shift_start_min, dtype=np.float64), np.nan)
        self.shift_length = np.append(np.asarray(shift_length_min, dtype=np.float64), np.nan)
        self.offers = np.append(np.asarray(offers_28d, dtype=np.float64), 0.0)
        self.accepts = np.append(np.asarray(accepts_28d, dtype=np.float64), 0.0)
        self.offer_eta_sum = np.append(np.asarray(offer_eta_sum_28d, dtype=np.float64), 0.0)
        self.unknown = len(self.index)

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def empty(cls) -> DriverTable:
        """A table that knows no driver (every driver gets the new-driver defaults)."""
        nothing = np.zeros(0)
        return cls([], nothing, nothing, nothing, nothing, nothing)

    @classmethod
    def from_parquet(cls, path: Path) -> DriverTable:
        """Read ``driver_table.parquet`` (columns ``DRIVER_TABLE_COLUMNS``).

        Raises:
            InputError: a column is missing.
        """
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        missing = [c for c in DRIVER_TABLE_COLUMNS if c not in table.column_names]
        if missing:
            raise InputError(f"driver table {path} lacks columns {missing}; republish the model")

        def col(name: str) -> FloatArray:
            return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)

        return cls(
            [str(d) for d in table.column("driver_id").to_pylist()],
            col("shift_start_min"),
            col("shift_length_min"),
            col("offers_28d"),
            col("accepts_28d"),
            col("offer_eta_sum_28d"),
        )

    def rows(self, driver_id: Sequence[str]) -> npt.NDArray[np.int64]:
        """Row of each driver in the table (the unknown-driver row when absent)."""
        get = self.index.get
        unknown = self.unknown
        return np.fromiter(
            (get(d, unknown) for d in driver_id), dtype=np.int64, count=len(driver_id)
        )


def local_clock(requested_at: datetime, tz: str) -> tuple[float, float]:
    """Minutes after local midnight (whole minutes) and local day of week (Monday = 0).

    Raises:
        InputError: the timestamp is naive (no UTC offset).
    """
    if requested_at.tzinfo is None or requested_at.utcoffset() is None:
        raise InputError("requested_at must carry a UTC offset, e.g. 2026-11-27T08:15:00+07:00")
    local = requested_at.astimezone(ZoneInfo(tz))
    return float(local.hour * 60 + local.minute), float(local.weekday())


def estimate_trip_km(
    pickup_lat: float, pickup_lng: float, dropoff_lat: float, dropoff_lng: float
) -> float:
    """Road km as the world measures trips: straight line x the road circuity."""
    return haversine_km_scalar(pickup_lat, pickup_lng, dropoff_lat, dropoff_lng) * ROAD_CIRCUITY


def estimate_fare(city: Market, trip_km: float, local_hour: int) -> float:
    """The city's tariff for a trip: base + per km + per minute at the hour's road speed."""
    minutes = trip_km / max(city.speed_at(local_hour), 1.0) * 60.0
    return city.fare_base + city.fare_per_km * trip_km + city.fare_per_min * minutes


def build_online_inputs(
    city: Market,
    bookings: Sequence[OnlineBooking],
    candidates: OnlineCandidates,
    drivers: DriverTable,
) -> CandidateInputs:
    """The ``CandidateInputs`` of a request, filled exactly as ``features.batch`` fills them.

    Raises:
        InputError: a timestamp without a UTC offset, or a row pointing at no booking.
    """
    n_b = len(bookings)
    b = candidates.booking
    if len(b) and (int(b.min()) < 0 or int(b.max()) >= n_b):
        raise InputError("a candidate row refers to a booking the request does not have")
    minute = np.empty(n_b)
    dow = np.empty(n_b)
    speed = np.empty(n_b)
    per_booking = np.empty((n_b, 6))
    for i, bk in enumerate(bookings):
        m, d = local_clock(bk.requested_at, city.tz)
        hour = int(m // 60)
        minute[i], dow[i], speed[i] = m, d, city.speed_at(hour)
        trip_km = bk.trip_km
        if trip_km is None or not math.isfinite(trip_km):
            trip_km = estimate_trip_km(bk.pickup_lat, bk.pickup_lng, bk.dropoff_lat, bk.dropoff_lng)
        fare = bk.fare
        if fare is None or not math.isfinite(fare):
            fare = estimate_fare(city, trip_km, hour)
        per_booking[i] = (
            bk.pickup_lat,
            bk.pickup_lng,
            bk.dropoff_lat,
            bk.dropoff_lng,
            trip_km,
            fare,
        )
    rows = per_booking[b]
    drv = drivers.rows(candidates.driver_id)
    return CandidateInputs(
        group=b.astype(np.int64, copy=False),
        driver_lat=candidates.lat,
        driver_lng=candidates.lng,
        pickup_lat=rows[:, 0],
        pickup_lng=rows[:, 1],
        dropoff_lat=rows[:, 2],
        dropoff_lng=rows[:, 3],
        home_lat=candidates.home_lat,
        home_lng=candidates.home_lng,
        rating=candidates.rating,
        eta_seconds=candidates.eta_seconds,
        speed_kmh=speed[b],
        local_minute=minute[b],
        day_of_week=dow[b],
        shift_start_min=drivers.shift_start[drv],
        shift_length_min=drivers.shift_length[drv],
        trip_km=rows[:, 4],
        fare=rows[:, 5],
        drv_offers_28d=drivers.offers[drv],
        drv_accepts_28d=drivers.accepts[drv],
        drv_offer_eta_sum_28d=drivers.offer_eta_sum[drv],
    )
