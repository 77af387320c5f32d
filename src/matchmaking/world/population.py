"""Where demand and drivers are: zones, the driver roster, and driver positions over time.

Geometry lives in a local equirectangular projection: kilometres east (x) and north (y) of
the city centre. Over a city's extent (< 30 km) its error is far below the metres that
matter here.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from matchmaking.markets import Market

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

KM_PER_DEG_LAT = 111.32
EARTH_RADIUS_KM = 6371.0088

BUSINESS = 0
RESIDENTIAL = 1

# Density knobs (see docs/data.md, "Scale and density").
ON_SHIFT_SHARE = 0.4  # average share of the roster on shift at a given moment
DRIVERS_PER_ZONE = 12.0  # on-shift drivers per hotspot the layout aims at
KM2_PER_ZONE = 6.0  # at full scale, one hotspot per this many km² of service area
BUSINESS_SHARE = 0.35  # share of hotspots that are business/centre zones
TRIP_DECAY = 0.5  # dropoff attraction decays as exp(-distance / (TRIP_DECAY x radius))
# Periods of the day for trip directions, and the dropoff pull of each zone kind in them.
OTHER, MORNING_PEAK, EVENING_PEAK = 0, 1, 2
DEST_KIND_PULL = {
    OTHER: {BUSINESS: 1.0, RESIDENTIAL: 1.0},
    MORNING_PEAK: {BUSINESS: 3.0, RESIDENTIAL: 0.5},  # home -> work
    EVENING_PEAK: {BUSINESS: 0.5, RESIDENTIAL: 3.0},  # work -> home
}
SIGMA_KM = {BUSINESS: 1.0, RESIDENTIAL: 1.4}  # spread of pickups around a hotspot
WORK_IN_BUSINESS = 0.55  # share of drivers who work a business hotspot

# Shift mixture: (weight, mean start hour, start sd minutes, mean length hours).
SHIFTS = (
    (0.33, 6.0, 45.0, 10.0),  # morning
    (0.27, 9.0, 60.0, 9.0),  # day
    (0.28, 16.0, 60.0, 8.5),  # evening
    (0.12, 20.5, 60.0, 7.5),  # night
)


def rng_for(seed: int, city: str, *keys: int) -> np.random.Generator:
    """An independent generator for (seed, city, keys...), stable across runs and orders."""
    entropy = [seed, zlib.crc32(city.encode()), *keys]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def to_latlng(city: Market, x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Local km (east, north of the centre) to degrees."""
    lat = city.lat + y / KM_PER_DEG_LAT
    lng = city.lng + x / (KM_PER_DEG_LAT * math.cos(math.radians(city.lat)))
    return lat, lng


def haversine_km(
    lat1: FloatArray, lng1: FloatArray, lat2: FloatArray, lng2: FloatArray
) -> FloatArray:
    """Great-circle distance in km (vectorised)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi = p2 - p1
    dlmb = np.radians(lng2 - lng1)
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


@dataclass(frozen=True)
class Zones:
    """Demand hotspots of a city: centres (km), kind, relative weight within kind, spread."""

    x: FloatArray
    y: FloatArray
    kind: IntArray
    weight: FloatArray
    sigma: FloatArray
    dest_cum: FloatArray  # (period, origin zone, dest zone) cumulative dropoff probabilities

    def pick(self, kind: int, u: FloatArray) -> IntArray:
        """Zone indices of ``kind`` chosen by weight, from uniforms ``u``."""
        idx = np.flatnonzero(self.kind == kind)
        cum = np.cumsum(self.weight[idx])
        return idx[np.minimum(np.searchsorted(cum / cum[-1], u), len(idx) - 1)]

    def pick_dest(self, period: IntArray, origin: IntArray, u: FloatArray) -> IntArray:
        """Dropoff zones for trips starting in ``origin`` zones during ``period``s."""
        cum = self.dest_cum[period, origin]
        return np.minimum((cum < u[:, None]).sum(axis=1), len(self.x) - 1)


def zone_count(city: Market, n_drivers: int) -> int:
    """Hotspots for a roster: about DRIVERS_PER_ZONE on-shift drivers each, capped by area."""
    wanted = round(n_drivers * ON_SHIFT_SHARE / DRIVERS_PER_ZONE)
    cap = max(3, int(city.radius_km**2 / KM2_PER_ZONE))
    return int(min(max(wanted, 3), cap))


def build_zones(city: Market, n_drivers: int, rng: np.random.Generator) -> Zones:
    """Business hotspots near the centre (the first at the centre), residential on a ring."""
    n = zone_count(city, n_drivers)
    n_bus = max(1, round(BUSINESS_SHARE * n))
    n_res = n - n_bus
    r = city.radius_km
    bus_rad = np.concatenate([[0.0], r * rng.uniform(0.05, 0.3, n_bus - 1)])
    bus_ang = rng.uniform(0, 2 * np.pi, n_bus)
    res_ang = 2 * np.pi * (np.arange(n_res) + rng.uniform(-0.3, 0.3, n_res)) / n_res
    res_ang += rng.uniform(0, 2 * np.pi)
    res_rad = r * rng.uniform(0.3, 0.7, n_res)
    rad = np.concatenate([bus_rad, res_rad])
    ang = np.concatenate([bus_ang, res_ang])
    kind = np.concatenate([np.full(n_bus, BUSINESS), np.full(n_res, RESIDENTIAL)])
    x, y = rad * np.cos(ang), rad * np.sin(ang)
    # Small rosters (few drivers per hotspot) get tighter hotspots, so density holds.
    compact = float(np.clip(np.sqrt(n_drivers * ON_SHIFT_SHARE / n / DRIVERS_PER_ZONE), 0.5, 1.0))
    weight = rng.gamma(4.0, 1.0, n)
    # Gravity model: a dropoff zone attracts by weight, kind (per period) and closeness.
    dist = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    attract = weight[None, :] * np.exp(-dist / (TRIP_DECAY * r))
    cum = np.empty((3, n, n))
    for period, pull in DEST_KIND_PULL.items():
        p = attract * np.where(kind == BUSINESS, pull[BUSINESS], pull[RESIDENTIAL])[None, :]
        cum[period] = np.cumsum(p, axis=1) / p.sum(axis=1, keepdims=True)
    return Zones(
        x=x,
        y=y,
        kind=kind.astype(np.int64),
        weight=weight,
        sigma=compact * np.where(kind == BUSINESS, SIGMA_KM[BUSINESS], SIGMA_KM[RESIDENTIAL]),
        dest_cum=cum,
    )


def sample_in_zones(
    zones: Zones, zone: IntArray, rng: np.random.Generator, spread: float = 1.0
) -> tuple[FloatArray, FloatArray]:
    """Points scattered (Gaussian, ``spread`` x the zone sigma) around the given zones."""
    s = zones.sigma[zone] * spread
    return (
        zones.x[zone] + rng.normal(0.0, 1.0, len(zone)) * s,
        zones.y[zone] + rng.normal(0.0, 1.0, len(zone)) * s,
    )


@dataclass(frozen=True)
class Roster:
    """A city's drivers; arrays indexed by driver number. Hidden fields never reach raw data."""

    driver_id: list[str]
    home_x: FloatArray
    home_y: FloatArray
    work_x: FloatArray
    work_y: FloatArray
    rating: FloatArray
    shift_start_min: IntArray
    shift_length_min: IntArray
    propensity: FloatArray  # hidden: truth only
    commute_min: FloatArray  # hidden: minutes to drift home -> work and back
    wobble_km: FloatArray  # hidden: amplitude of the roaming around the work hotspot
    wobble_period_min: FloatArray
    wobble_phase: FloatArray

    def __len__(self) -> int:
        return len(self.driver_id)


def roster_size(base_daily_bookings: int) -> int:
    """About one active driver per 8 daily bookings, at least 30."""
    return max(30, round(base_daily_bookings / 8))


def build_roster(city: Market, zones: Zones, n: int, rng: np.random.Generator) -> Roster:
    """Drivers living in residential zones, working a hotspot, on a daily shift."""
    home_zone = zones.pick(RESIDENTIAL, rng.random(n))
    home_x, home_y = sample_in_zones(zones, home_zone, rng)
    work_bus = zones.pick(BUSINESS, rng.random(n))
    # Those working a residential hotspot mostly stay in their own neighbourhood.
    work_res = np.where(rng.random(n) < 0.5, home_zone, zones.pick(RESIDENTIAL, rng.random(n)))
    work_zone = np.where(rng.random(n) < WORK_IN_BUSINESS, work_bus, work_res)
    work_x, work_y = sample_in_zones(zones, work_zone, rng, spread=0.6)

    rating = np.round(np.clip(5.0 - rng.gamma(1.3, 0.15, n), 1.0, 5.0), 2).astype(np.float64)

    weights = np.array([s[0] for s in SHIFTS])
    comp = np.searchsorted(np.cumsum(weights) / weights.sum(), rng.random(n))
    mean_start = np.array([s[1] * 60 for s in SHIFTS])[comp]
    sd_start = np.array([s[2] for s in SHIFTS])[comp]
    mean_len = np.array([s[3] * 60 for s in SHIFTS])[comp]
    start = np.round(mean_start + rng.normal(0, 1, n) * sd_start) % 1440
    length = np.clip(np.round(mean_len + rng.normal(0, 45, n)), 360, 660)

    return Roster(
        driver_id=[f"{city.id}-d{i:06d}" for i in range(n)],
        home_x=home_x,
        home_y=home_y,
        work_x=work_x,
        work_y=work_y,
        rating=rating,
        shift_start_min=start.astype(np.int64),
        shift_length_min=length.astype(np.int64),
        propensity=rng.normal(0.0, 0.7, n),
        commute_min=rng.uniform(30.0, 60.0, n),
        wobble_km=rng.uniform(0.2, 0.7, n),
        wobble_period_min=rng.uniform(50.0, 150.0, n),
        wobble_phase=rng.uniform(0, 2 * np.pi, n),
    )


def _smoothstep(z: FloatArray) -> FloatArray:
    z = np.clip(z, 0.0, 1.0)
    return z * z * (3 - 2 * z)


@dataclass(frozen=True)
class DriverState:
    """Where every driver is at one instant, and how far into the shift."""

    x: FloatArray
    y: FloatArray
    on_shift: npt.NDArray[np.bool_]
    minutes_in_shift: FloatArray


def driver_state(roster: Roster, t_abs_min: float) -> DriverState:
    """Deterministic positions at local time ``t_abs_min`` (minutes since 2000-01-01 00:00).

    A driver leaves home at the shift start, drifts to the work hotspot over ``commute_min``,
    roams around it, and drifts back home over the last ``commute_min`` of the shift.
    """
    s = np.mod(t_abs_min - roster.shift_start_min, 1440.0)
    on = s < roster.shift_length_min
    to_work = _smoothstep(s / roster.commute_min) * _smoothstep(
        (roster.shift_length_min - s) / roster.commute_min
    )
    phase = 2 * np.pi * t_abs_min / roster.wobble_period_min + roster.wobble_phase
    wob = roster.wobble_km * to_work
    x = roster.home_x + to_work * (roster.work_x - roster.home_x) + wob * np.cos(phase)
    y = roster.home_y + to_work * (roster.work_y - roster.home_y) + wob * np.sin(1.3 * phase)
    return DriverState(x=x, y=y, on_shift=on, minutes_in_shift=s)
