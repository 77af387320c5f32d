"""Generate the synthetic world: drivers, bookings, candidates, dispatch logs, ground truth.

For each city-day, bookings are simulated in time-ordered chunks: pickups and dropoffs
around demand hotspots, candidates found with a k-d tree over the drivers on shift in each
5-minute bucket, true acceptance and cancellation probabilities from ``world.truth``, and a
historical dispatcher (``world.dispatch``: softmax over ETA, logged with its propensities) whose
offers produce the logged labels. Chunks stream into
a staged partition (``matchmaking.lake``) published atomically, truth first. Every random draw
comes from a generator seeded by (seed, city, date, chunk), so output bytes depend on the
seed only. See docs/data.md.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from scipy.spatial import cKDTree
from tqdm import tqdm

from matchmaking import lake
from matchmaking.errors import InputError
from matchmaking.lake import storage
from matchmaking.lake.storage import Location, LocationLike
from matchmaking.markets import Market, get_market
from matchmaking.schema import (
    BOOKING_STATUSES,
    BOOKINGS,
    CANDIDATES,
    DRIVER_TRUTH,
    DRIVERS,
    GROUND_TRUTH,
    UTC_TS,
)
from matchmaking.world import truth
from matchmaking.world.dispatch import (
    DEFAULT_TEMPERATURE_MIN,
    SoftmaxEtaPolicy,
    check_temperature,
    dispatch,
    group_rank,
)
from matchmaking.world.population import (
    BUSINESS,
    EVENING_PEAK,
    MORNING_PEAK,
    OTHER,
    RESIDENTIAL,
    DriverState,
    FloatArray,
    IntArray,
    Roster,
    Zones,
    build_roster,
    build_zones,
    driver_state,
    haversine_km,
    rng_for,
    roster_size,
    sample_in_zones,
    to_latlng,
)

logger = logging.getLogger(__name__)

MIN_START = date(2000, 1, 1)
MAX_END = date(2100, 12, 31)
MAX_DAYS = 3660

CHUNK_BOOKINGS = 50_000
BUCKET_MIN = 5.0
SEARCH_RADII_KM = (1.0, 2.0, 3.0)
MIN_CANDIDATES = 3  # widen the search radius below this many
MAX_CANDIDATES = 8  # K nearest by ETA
CIRCUITY = 1.3
MAX_OFFERS = 3
ETA_LOG_NOISE = 0.04  # measurement noise between the true and the logged ETA
TRIP_KM_RANGE = (1.5, 15.0)  # straight-line pickup -> dropoff
ETA_HIST_MAX_S = 3600

# Share of the day's bookings per local hour: morning peak 7-9, evening peak 17-19.
DEMAND_BY_HOUR = np.array(
    [1.0, 0.6, 0.4, 0.3, 0.4, 1.0, 2.5, 5.0, 6.0, 5.0, 4.0, 4.0,
     4.5, 4.2, 4.0, 4.2, 5.0, 6.5, 7.0, 6.0, 4.5, 3.5, 2.5, 1.6]
)  # fmt: skip
MORNING = range(6, 10)
EVENING = range(16, 20)
# Monday .. Sunday volume relative to the average day (scale mode only).
WEEKDAY_FACTOR = (0.97, 0.97, 0.98, 1.0, 1.08, 1.07, 0.93)

# Seed-purpose keys for rng_for.
_ZONES, _ROSTER, _FARE, _DAY, _CHUNK = 1, 2, 3, 4, 5
_EPOCH = date(2000, 1, 1)


# ----------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------


@dataclass
class CityStats:
    """Counters accumulated over a city's days."""

    days: int = 0
    drivers: int = 0
    bookings: int = 0
    candidates: int = 0
    no_candidates: int = 0
    offers: int = 0
    accepted: int = 0
    completed: int = 0
    eta_hist: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(ETA_HIST_MAX_S + 1, dtype=np.int64)
    )

    def median_eta_min(self) -> float:
        """Median logged ETA of the accepted drivers, minutes (NaN when none)."""
        total = int(self.eta_hist.sum())
        if total == 0:
            return float("nan")
        return float(np.searchsorted(np.cumsum(self.eta_hist), (total + 1) / 2)) / 60.0


@dataclass
class WorldSummary:
    """What ``generate_world`` wrote."""

    out: Location
    start: date
    days: int
    seed: int
    cities: dict[str, CityStats]

    def to_table(self) -> str:
        """A readable per-city table plus the output directory."""
        header = (
            f"{'city':<20} {'days':>4} {'drivers':>7} {'bookings':>9} {'candidates':>10} "
            f"{'offers':>8} {'accept%':>7} {'complete%':>9} {'cand/bkg':>8} {'no-cand%':>8} "
            f"{'median ETA':>10}"
        )
        lines = [header, "-" * len(header)]
        for cid, s in self.cities.items():
            acc = 100 * s.accepted / s.offers if s.offers else float("nan")
            comp = 100 * s.completed / s.bookings if s.bookings else float("nan")
            cpb = s.candidates / s.bookings if s.bookings else float("nan")
            noc = 100 * s.no_candidates / s.bookings if s.bookings else float("nan")
            lines.append(
                f"{cid:<20} {s.days:>4} {s.drivers:>7} {s.bookings:>9} {s.candidates:>10} "
                f"{s.offers:>8} {acc:>7.1f} {comp:>9.1f} {cpb:>8.2f} {noc:>8.1f} "
                f"{s.median_eta_min():>8.1f} m"
            )
        end = self.start + timedelta(days=self.days - 1)
        lines.append(f"days {self.start}..{end}, seed {self.seed}; lake: {self.out}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Per-city context
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CityWorld:
    """Everything about a city that does not change from day to day."""

    city: Market
    zones: Zones
    roster: Roster
    driver_ids: pa.Array
    speed: FloatArray  # km/h by local hour
    median_fare: float
    base_daily: float  # average bookings per day before the weekday factor


def _round_fare(fare: FloatArray, currency: str) -> FloatArray:
    step = {"IDR": 100.0, "VND": 1000.0, "THB": 1.0, "SGD": 0.01}.get(currency, 0.01)
    return np.round(np.maximum(fare, step) / step) * step


@dataclass(frozen=True)
class Trips:
    """Pickups, dropoffs and fares of a batch of bookings (km coordinates)."""

    px: FloatArray
    py: FloatArray
    dx: FloatArray
    dy: FloatArray
    trip_km: FloatArray
    fare: FloatArray


def sample_trips(
    city: Market, zones: Zones, speed: FloatArray, hour: IntArray, rng: np.random.Generator
) -> Trips:
    """Pickup and dropoff around hotspots; commute direction depends on the hour."""
    n = len(hour)
    morning = np.isin(hour, MORNING)
    evening = np.isin(hour, EVENING)
    p_res = np.where(morning, 0.75, np.where(evening, 0.3, 0.5))
    p_kind = np.where(rng.random(n) < p_res, RESIDENTIAL, BUSINESS)
    u = rng.random(n)
    p_zone = np.where(p_kind == RESIDENTIAL, zones.pick(RESIDENTIAL, u), zones.pick(BUSINESS, u))
    px, py = sample_in_zones(zones, p_zone, rng)

    period = np.where(morning, MORNING_PEAK, np.where(evening, EVENING_PEAK, OTHER))
    d_zone = zones.pick_dest(period, p_zone, rng.random(n))
    dx, dy = sample_in_zones(zones, d_zone, rng)

    # Keep trips plausible: 1.5-15 km straight line (about 2-20 km by road).
    vx, vy = dx - px, dy - py
    dist = np.hypot(vx, vy)
    angle = rng.uniform(0, 2 * np.pi, n)
    tiny = dist < 1e-6
    vx = np.where(tiny, np.cos(angle), vx)
    vy = np.where(tiny, np.sin(angle), vy)
    dist = np.where(tiny, 1.0, dist)
    target = np.clip(dist, *TRIP_KM_RANGE)
    dx = px + vx / dist * target
    dy = py + vy / dist * target

    plat, plng = to_latlng(city, px, py)
    dlat, dlng = to_latlng(city, dx, dy)
    circuity = np.clip(rng.normal(CIRCUITY, 0.04, n), 1.2, 1.4)
    trip_km = haversine_km(plat, plng, dlat, dlng) * circuity
    trip_min = trip_km / speed[hour] * 60.0
    raw_fare = city.fare_base + city.fare_per_km * trip_km + city.fare_per_min * trip_min
    fare = _round_fare(raw_fare * rng.lognormal(0.0, 0.05, n), city.currency)
    return Trips(px=px, py=py, dx=dx, dy=dy, trip_km=trip_km, fare=fare)


def _sample_hours(n: int, rng: np.random.Generator) -> IntArray:
    p = DEMAND_BY_HOUR / DEMAND_BY_HOUR.sum()
    return np.searchsorted(np.cumsum(p), rng.random(n)).clip(0, 23).astype(np.int64)


def build_city(city: Market, seed: int, base_daily: float) -> CityWorld:
    """Zones, roster and reference fare of a city (independent of dates)."""
    n_drivers = roster_size(round(base_daily))
    zones = build_zones(city, n_drivers, rng_for(seed, city.id, _ZONES))
    roster = build_roster(city, zones, n_drivers, rng_for(seed, city.id, _ROSTER))
    speed = np.asarray(city.speed_kmh, dtype=np.float64)
    rng = rng_for(seed, city.id, _FARE)
    sample = sample_trips(city, zones, speed, _sample_hours(20_000, rng), rng)
    return CityWorld(
        city=city,
        zones=zones,
        roster=roster,
        driver_ids=pa.array(roster.driver_id, type=pa.string()),
        speed=speed,
        median_fare=float(np.median(sample.fare)),
        base_daily=base_daily,
    )


def drivers_tables(cw: CityWorld) -> tuple[pa.Table, pa.Table]:
    """The raw roster (``schema.DRIVERS``) and the hidden propensities (``DRIVER_TRUTH``)."""
    r = cw.roster
    n = len(r)
    lat, lng = to_latlng(cw.city, r.home_x, r.home_y)
    raw = pa.Table.from_arrays(
        [
            cw.driver_ids,
            pa.repeat(pa.scalar(cw.city.id, pa.string()), n),
            pa.array(lat),
            pa.array(lng),
            pa.array(r.rating),
            pa.array(r.shift_start_min.astype(np.int16)),
            pa.array(r.shift_length_min.astype(np.int16)),
        ],
        schema=DRIVERS,
    )
    hidden = pa.Table.from_arrays([cw.driver_ids, pa.array(r.propensity)], schema=DRIVER_TRUTH)
    return raw, hidden


# ----------------------------------------------------------------------------------------
# One chunk of bookings
# ----------------------------------------------------------------------------------------


@dataclass
class _Bucket:
    index: int
    t_mid: float
    on_idx: IntArray
    tree: cKDTree | None
    state: DriverState


class _BucketCache:
    """Driver positions and k-d tree per 5-minute bucket (deterministic, so cacheable)."""

    def __init__(self, roster: Roster, day_abs_min: float) -> None:
        self.roster = roster
        self.day_abs_min = day_abs_min
        self.last: _Bucket | None = None

    def get(self, b: int) -> _Bucket:
        if self.last is not None and self.last.index == b:
            return self.last
        t_mid = (b + 0.5) * BUCKET_MIN
        state = driver_state(self.roster, self.day_abs_min + t_mid)
        on_idx = np.flatnonzero(state.on_shift)
        tree = cKDTree(np.column_stack([state.x[on_idx], state.y[on_idx]])) if len(on_idx) else None
        self.last = _Bucket(b, t_mid, on_idx, tree, state)
        return self.last


@dataclass
class ChunkResult:
    """Tables of one chunk and its counters."""

    bookings: pa.Table
    candidates: pa.Table
    ground_truth: pa.Table
    stats: CityStats


@dataclass(frozen=True)
class Found:
    """Drivers on shift near each booking's pickup: one row per (booking, driver) pair."""

    b: IntArray  # booking index within the chunk
    d: IntArray  # driver index in the roster
    s_shift: FloatArray  # minutes into the shift at the request time
    drv_x: FloatArray  # driver position (km)
    drv_y: FloatArray


def search_candidates(cache: _BucketCache, t_min: FloatArray, trips: Trips, k: int) -> Found:
    """The ``k`` drivers on shift nearest to each pickup within the widest search radius, from
    the k-d tree of the request's 5-minute bucket (``t_min`` sorted)."""
    bucket = (t_min // BUCKET_MIN).astype(np.int64)
    edges = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1], True])
    rows_b, rows_d, rows_s, rows_x, rows_y = [], [], [], [], []
    for lo, hi in itertools.pairwise(edges):
        bk = cache.get(int(bucket[lo]))
        if bk.tree is None:
            continue
        kk = min(k, len(bk.on_idx))
        pts = np.column_stack([trips.px[lo:hi], trips.py[lo:hi]])
        _, idx = bk.tree.query(pts, k=kk, distance_upper_bound=SEARCH_RADII_KM[-1])
        idx = idx.reshape(hi - lo, kk)
        ok = idx < len(bk.on_idx)
        bi, kj = np.nonzero(ok)
        drv = bk.on_idx[idx[bi, kj]]
        rows_b.append(lo + bi)
        rows_d.append(drv)
        rows_x.append(bk.state.x[drv])
        rows_y.append(bk.state.y[drv])
        # minutes into the shift at the request time (not the bucket middle)
        rows_s.append(bk.state.minutes_in_shift[drv] + (t_min[lo + bi] - bk.t_mid))
    cat = np.concatenate
    return Found(
        b=cat(rows_b) if rows_b else np.zeros(0, np.int64),
        d=cat(rows_d) if rows_d else np.zeros(0, np.int64),
        s_shift=cat(rows_s) if rows_s else np.zeros(0),
        drv_x=cat(rows_x) if rows_x else np.zeros(0),
        drv_y=cat(rows_y) if rows_y else np.zeros(0),
    )


def true_probabilities(
    cw: CityWorld,
    trips: Trips,
    hour: IntArray,
    b: IntArray,
    d: IntArray,
    drv_x: FloatArray,
    drv_y: FloatArray,
    s_shift: FloatArray,
    true_eta_s: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """The hidden ``(p_accept, p_cancel)`` of each (booking ``b``, driver ``d``) row."""
    roster = cw.roster
    hx, hy = roster.home_x[d], roster.home_y[d]
    home_gain = np.hypot(drv_x - hx, drv_y - hy) - np.hypot(trips.dx[b] - hx, trips.dy[b] - hy)
    eta_min = true_eta_s / 60.0
    p_accept = truth.accept_probability(
        eta_min=eta_min,
        rating=roster.rating[d],
        home_gain_km=home_gain,
        minutes_to_shift_end=roster.shift_length_min[d] - s_shift,
        fare_ratio=trips.fare[b] / cw.median_fare,
        propensity=roster.propensity[d],
        hour_local=hour[b],
    )
    return p_accept, truth.cancel_probability(eta_min)


def simulate_chunk(
    cw: CityWorld,
    day: date,
    first_index: int,
    t_min: FloatArray,
    cache: _BucketCache,
    midnight_utc_us: int,
    rng: np.random.Generator,
    policy: SoftmaxEtaPolicy,
) -> ChunkResult:
    """Simulate consecutive bookings requested at local minutes ``t_min`` (sorted)."""
    city = cw.city
    n = len(t_min)
    hour = (t_min // 60).astype(np.int64).clip(0, 23)
    trips = sample_trips(city, cw.zones, cw.speed, hour, rng)

    # --- candidate search, one k-d tree per 5-minute bucket -----------------------------
    found = search_candidates(cache, t_min, trips, MAX_CANDIDATES + 4)
    b, d, s_shift, drv_x, drv_y = found.b, found.d, found.s_shift, found.drv_x, found.drv_y

    plat, plng = to_latlng(city, trips.px, trips.py)
    dlat, dlng = to_latlng(city, drv_x, drv_y)
    distance_km = haversine_km(dlat, dlng, plat[b], plng[b])

    # Widen 1 -> 2 -> 3 km while fewer than MIN_CANDIDATES are found.
    c1 = np.bincount(b[distance_km <= SEARCH_RADII_KM[0]], minlength=n)
    c2 = np.bincount(b[distance_km <= SEARCH_RADII_KM[1]], minlength=n)
    radius = np.where(
        c1 >= MIN_CANDIDATES,
        SEARCH_RADII_KM[0],
        np.where(c2 >= MIN_CANDIDATES, SEARCH_RADII_KM[1], SEARCH_RADII_KM[2]),
    )
    keep = distance_km <= radius[b]
    b, d, s_shift, distance_km = b[keep], d[keep], s_shift[keep], distance_km[keep]
    drv_x, drv_y, dlat, dlng = drv_x[keep], drv_y[keep], dlat[keep], dlng[keep]
    speed = cw.speed[hour[b]]
    m = len(b)
    true_eta_s = distance_km * CIRCUITY / speed * 3600.0 + rng.lognormal(math.log(25.0), 0.5, m)
    # Logged to 0.1 s: the dispatcher decides on exactly what the log holds.
    eta_s = np.round(true_eta_s * rng.lognormal(0.0, ETA_LOG_NOISE, m), 1)

    # K nearest by logged ETA, ranked.
    order = np.lexsort((eta_s, b))
    rank = group_rank(b, order)
    top = rank <= MAX_CANDIDATES
    sel = order[top[order]]  # rows sorted by (booking, eta), capped at K
    b, d, s_shift = b[sel], d[sel], s_shift[sel]
    distance_km, true_eta_s, eta_s, rank = distance_km[sel], true_eta_s[sel], eta_s[sel], rank[sel]
    drv_x, drv_y, dlat, dlng = drv_x[sel], drv_y[sel], dlat[sel], dlng[sel]
    m = len(b)
    n_cand = np.bincount(b, minlength=n)

    # --- hidden ground truth ------------------------------------------------------------
    p_accept, p_cancel = true_probabilities(
        cw, trips, hour, b, d, drv_x, drv_y, s_shift, true_eta_s
    )

    # --- historical dispatcher: softmax over ETA, one offer at a time ---------------------
    logged = dispatch(b, eta_s, policy, rng)
    offer_pos = logged.offer_pos
    would_accept = rng.random(m) < p_accept
    no_accept = MAX_OFFERS + 1
    first_acc = np.full(n, no_accept, dtype=np.int64)
    hit = would_accept & (offer_pos <= MAX_OFFERS)
    np.minimum.at(first_acc, b[hit], offer_pos[hit])
    n_offers = np.where(first_acc <= MAX_OFFERS, first_acc, np.minimum(n_cand, MAX_OFFERS))
    offered = offer_pos <= n_offers[b]
    accepted = offered & (offer_pos == first_acc[b])

    assigned_row = np.full(n, -1, dtype=np.int64)
    assigned_row[b[accepted]] = np.flatnonzero(accepted)
    has_driver = assigned_row >= 0
    cancel_p = np.where(has_driver, p_cancel[np.maximum(assigned_row, 0)], 0.0)
    cancelled = has_driver & (rng.random(n) < cancel_p)
    status = np.where(
        n_cand == 0,
        BOOKING_STATUSES.index("no_driver"),
        np.where(
            ~has_driver,
            BOOKING_STATUSES.index("expired"),
            np.where(
                cancelled,
                BOOKING_STATUSES.index("rider_cancelled"),
                BOOKING_STATUSES.index("completed"),
            ),
        ),
    )

    # --- tables -------------------------------------------------------------------------
    ts_us = midnight_utc_us + np.round(t_min * 60e6).astype(np.int64)
    stamp = day.strftime("%Y%m%d")
    booking_ids = pa.array(
        [f"{city.id}-{stamp}-{i:07d}" for i in range(first_index, first_index + n)],
        type=pa.string(),
    )
    requested_at = pa.array(ts_us, type=UTC_TS)
    drop_lat, drop_lng = to_latlng(city, trips.dx, trips.dy)
    assigned_driver = cw.driver_ids.take(
        pa.array(d[np.maximum(assigned_row, 0)] if m else np.zeros(n, np.int64), mask=~has_driver)
    )
    bookings = pa.Table.from_arrays(
        [
            booking_ids,
            pa.repeat(pa.scalar(city.id, pa.string()), n),
            requested_at,
            pa.array(plat),
            pa.array(plng),
            pa.array(drop_lat),
            pa.array(drop_lng),
            pa.array(np.round(trips.trip_km, 3)),
            pa.array(trips.fare),
            pa.repeat(pa.scalar(city.currency, pa.string()), n),
            pa.array(n_cand.astype(np.int16)),
            pa.array(n_offers.astype(np.int16)),
            pa.array(list(BOOKING_STATUSES), type=pa.string()).take(pa.array(status)),
            assigned_driver,
            pa.repeat(pa.scalar(policy.name, pa.string()), n),
            pa.repeat(pa.scalar(policy.version, pa.string()), n),
        ],
        schema=BOOKINGS,
    )
    b_idx = pa.array(b)
    cand_booking = booking_ids.take(b_idx)
    cand_driver = cw.driver_ids.take(pa.array(d))
    candidates = pa.Table.from_arrays(
        [
            cand_booking,
            cand_driver,
            requested_at.take(b_idx),
            pa.array(dlat),
            pa.array(dlng),
            pa.array(np.round(distance_km, 4)),
            pa.array(eta_s),
            pa.array(rank.astype(np.int16)),
            pa.array(offered),
            pa.array(np.where(offered, offer_pos, 0).astype(np.int16)),
            pa.array(accepted, mask=~offered),
            pa.array(logged.first_offer_propensity),
            pa.array(logged.offer_propensity, mask=~offered),
        ],
        schema=CANDIDATES,
    )
    ground_truth = pa.Table.from_arrays(
        [cand_booking, cand_driver, pa.array(p_accept), pa.array(p_cancel)],
        schema=GROUND_TRUTH,
    )

    stats = CityStats(
        bookings=n,
        candidates=m,
        no_candidates=int((n_cand == 0).sum()),
        offers=int(offered.sum()),
        accepted=int(accepted.sum()),
        completed=int((status == BOOKING_STATUSES.index("completed")).sum()),
    )
    eta_acc = np.clip(np.round(eta_s[accepted]).astype(np.int64), 0, ETA_HIST_MAX_S)
    stats.eta_hist += np.bincount(eta_acc, minlength=ETA_HIST_MAX_S + 1)
    return ChunkResult(bookings, candidates, ground_truth, stats)


# ----------------------------------------------------------------------------------------
# One city-day, the whole world
# ----------------------------------------------------------------------------------------


def _merge(into: CityStats, part: CityStats) -> None:
    into.bookings += part.bookings
    into.candidates += part.candidates
    into.no_candidates += part.no_candidates
    into.offers += part.offers
    into.accepted += part.accepted
    into.completed += part.completed
    into.eta_hist += part.eta_hist


def bookings_for_day(cw: CityWorld, day: date, bookings_per_day: int | None) -> int:
    """The day's volume: the override, else the scaled volume times the weekday factor."""
    if bookings_per_day is not None:
        return bookings_per_day
    return max(1, round(cw.base_daily * WEEKDAY_FACTOR[day.weekday()]))


def generate_day(
    cw: CityWorld,
    day: date,
    n_bookings: int,
    seed: int,
    out: LocationLike,
    progress: bool = False,
    policy: SoftmaxEtaPolicy | None = None,
) -> CityStats:
    """Simulate one city-day and publish its truth, then its raw partition."""
    city = cw.city
    policy = policy or SoftmaxEtaPolicy(max_offers=MAX_OFFERS)
    ordinal = (day - _EPOCH).days
    rng = rng_for(seed, city.id, _DAY, ordinal)
    t_min = np.sort(_sample_hours(n_bookings, rng) * 60.0 + rng.random(n_bookings) * 60.0)
    midnight = datetime.combine(day, time(0), tzinfo=ZoneInfo(city.tz))
    midnight_utc_us = round(midnight.timestamp()) * 1_000_000
    cache = _BucketCache(cw.roster, ordinal * 1440.0)

    stats = CityStats()
    n_chunks = max(1, math.ceil(n_bookings / CHUNK_BOOKINGS))
    with (
        lake.PartitionWriter(out, lake.TRUTH, city.id, day) as truth_part,
        lake.PartitionWriter(out, lake.RAW, city.id, day) as raw_part,
    ):
        writers = {
            "ground_truth": lake.parquet_writer(
                truth_part.file("ground_truth.parquet"), GROUND_TRUTH
            ),
            "bookings": lake.parquet_writer(raw_part.file("bookings.parquet"), BOOKINGS),
            "candidates": lake.parquet_writer(raw_part.file("candidates.parquet"), CANDIDATES),
        }
        try:
            chunks = tqdm(
                range(n_chunks),
                desc=f"{city.id} {day}",
                unit="chunk",
                leave=False,
                disable=not progress or n_chunks == 1,
            )
            for i in chunks:
                lo, hi = i * CHUNK_BOOKINGS, min(n_bookings, (i + 1) * CHUNK_BOOKINGS)
                res = simulate_chunk(
                    cw,
                    day,
                    lo,
                    t_min[lo:hi],
                    cache,
                    midnight_utc_us,
                    rng_for(seed, city.id, _CHUNK, ordinal, i),
                    policy,
                )
                writers["ground_truth"].write_table(res.ground_truth)
                writers["bookings"].write_table(res.bookings)
                writers["candidates"].write_table(res.candidates)
                _merge(stats, res.stats)
        finally:
            for w in writers.values():
                w.close()
        truth_part.commit()
        raw_part.commit()
    stats.days = 1
    return stats


def _validate(
    cities: list[str],
    start: date,
    days: int,
    seed: int,
    out: LocationLike,
    scale: float,
    bookings_per_day: int | None,
    dispatch_temperature: float,
) -> list[Market]:
    if not cities:
        raise InputError("no city given; pass --cities, e.g. --cities jakarta,bangkok")
    resolved = [get_market(c) for c in dict.fromkeys(cities)]
    if not 1 <= days <= MAX_DAYS:
        raise InputError(f"days must be between 1 and {MAX_DAYS}, got {days}")
    if start < MIN_START:
        raise InputError(f"start date {start} is before {MIN_START}; pick a later --start")
    end = start + timedelta(days=days - 1)
    if end > MAX_END:
        raise InputError(f"the last day {end} is after {MAX_END}; pick an earlier --start")
    if seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed}")
    if not (math.isfinite(scale) and scale > 0):
        raise InputError(f"scale must be a positive number, got {scale}")
    if bookings_per_day is not None and bookings_per_day < 1:
        raise InputError(f"bookings per day must be at least 1, got {bookings_per_day}")
    problem = check_temperature(dispatch_temperature)
    if problem:
        raise InputError(problem)
    lake.ensure_writable(out)
    return resolved


def generate_world(
    cities: list[str],
    start: date,
    days: int,
    seed: int,
    out: LocationLike,
    scale: float,
    bookings_per_day: int | None,
    progress: bool,
    dispatch_temperature: float = DEFAULT_TEMPERATURE_MIN,
) -> WorldSummary:
    """Generate the world into the lake at ``out`` (``out/raw`` and ``out/truth``).

    Args:
        cities: city ids (see ``matchmaking world cities``).
        start: first local calendar day.
        days: number of days (1-3660).
        seed: random seed; same seed, same bytes.
        out: lake root.
        scale: share of each city's real daily volume to simulate.
        bookings_per_day: exact bookings per city-day; overrides ``scale``.
        progress: show a tqdm progress bar over city-days.
        dispatch_temperature: the historical dispatcher's softmax temperature, minutes of
            logged ETA (``world.dispatch``); lower is closer to nearest-ETA.

    Raises:
        UnknownCityError, InputError: invalid arguments (nothing is written).
        StorageError: ``out`` is not writable.
    """
    resolved = _validate(
        cities, start, days, seed, out, scale, bookings_per_day, dispatch_temperature
    )
    policy = SoftmaxEtaPolicy(temperature_min=dispatch_temperature, max_offers=MAX_OFFERS)
    out = storage.location(out)
    summary = WorldSummary(out=out, start=start, days=days, seed=seed, cities={})
    with tqdm(total=len(resolved) * days, unit="city-day", disable=not progress) as bar:
        for city in resolved:
            base = float(bookings_per_day or city.daily_bookings * scale)
            cw = build_city(city, seed, base)
            for layer in (lake.TRUTH, lake.RAW):
                lake.clean_stale(out, layer, city.id)
            raw_drivers, hidden = drivers_tables(cw)
            lake.write_file_atomic(
                storage.join(lake.city_dir(out, lake.TRUTH, city.id), "drivers.parquet"), hidden
            )
            lake.write_file_atomic(
                storage.join(lake.city_dir(out, lake.RAW, city.id), "drivers.parquet"), raw_drivers
            )
            stats = CityStats(drivers=len(cw.roster))
            for i in range(days):
                day = start + timedelta(days=i)
                n = bookings_for_day(cw, day, bookings_per_day)
                bar.set_postfix_str(f"{city.id} {day}")
                _merge(stats, generate_day(cw, day, n, seed, out, progress, policy))
                stats.days += 1
                bar.update(1)
                logger.debug("generated %s %s: %d bookings", city.id, day, n)
            summary.cities[city.id] = stats
            logger.info(
                "generated %s: %d days, %d bookings, %d candidates",
                city.id,
                stats.days,
                stats.bookings,
                stats.candidates,
            )
    return summary
