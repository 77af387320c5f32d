"""The simulator plays dispatch against a live scoring service (``matchmaking world dispatch``).

For one city-day, the world's generator draws the day's bookings (pickups, dropoffs, fares,
the drivers on shift and where they are) exactly as ``world generate`` would, but the offers
are not made by the historical dispatcher: in time order, each booking's candidates (the
nearest drivers on shift that are **not busy**, at most ``MAX_CANDIDATES`` by logged ETA, the
search radius widened as the generator does) go to ``POST /v1/rank`` with only what a dispatch
service knows (``serving.schemas.RankRequest``: pickup, dropoff, request time, trip km, quoted
fare; per driver its position, rating, home and logged ETA). The answer is offered in its order,
at most ``MAX_OFFERS`` drivers, each accepting with the world's true probability; the first who
accepts is busy until the trip ends (pickup plus trip time; until the pickup when the rider
cancels) and is no candidate of any booking meanwhile. Every outcome goes back to
``POST /v1/outcomes``.

The day is then written in the lake contract, truth first as the generator does: raw bookings
(``logging_policy`` = the served policy, ``logging_policy_version`` = the model version that
answered), raw candidates with the service's propensities (``first_offer_propensity`` =
the answer's ``first_propensity``, ``offer_propensity`` = its ``propensity`` for the offered
rows), and the truth partition. The next ``process`` therefore reads logs that the served
model produced, and off-policy evaluation gets the propensities of the policy that served.

Speed: rank calls run on a small thread pool, pipelined without changing the result: a booking
is sent only once every earlier booking whose candidate pool shares a driver with it has its
outcome (only those can make one of its drivers busy), and never ahead of an earlier booking
that is still waiting. Outcomes are posted in batches in the background.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import httpx
import numpy as np
import pyarrow as pa

from matchmaking import lake
from matchmaking.errors import ConfigError, InputError, MatchmakingError
from matchmaking.lake import storage
from matchmaking.lake.storage import Location, LocationLike
from matchmaking.markets import get_market
from matchmaking.schema import BOOKINGS, CANDIDATES, GROUND_TRUTH, UTC_TS
from matchmaking.world.dispatch import group_rank
from matchmaking.world.generate import (
    _EPOCH,
    CIRCUITY,
    ETA_LOG_NOISE,
    MAX_CANDIDATES,
    MAX_OFFERS,
    MIN_CANDIDATES,
    SEARCH_RADII_KM,
    CityWorld,
    _BucketCache,
    _sample_hours,
    bookings_for_day,
    build_city,
    drivers_tables,
    sample_trips,
    search_candidates,
    true_probabilities,
)
from matchmaking.world.population import haversine_km, rng_for, to_latlng

logger = logging.getLogger(__name__)

#: Seed-purpose key of the served days (the generator uses 1-5).
_SERVED = 6
#: Drivers looked up around each pickup before the busy ones are left out.
POOL = MAX_CANDIDATES + 12
#: Seconds between two offers of a booking (the driver's time to answer).
OFFER_SECONDS = 15.0
#: Outcomes per ``POST /v1/outcomes``.
OUTCOME_BATCH = 500
#: What the answer of ``/v1/rank`` must carry for a served day (issue 13).
ANSWER_FIELDS = ("request_id", "arm", "policy", "version")
CANDIDATE_FIELDS = ("driver_id", "rank", "first_propensity", "propensity")


class Service(Protocol):
    """What plays the scoring service: ranks a booking, stores outcomes."""

    def rank(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def post_outcomes(self, outcomes: list[dict[str, Any]]) -> None: ...


class ServiceError(MatchmakingError):
    """The scoring service could not be reached or refused a request (exit 1)."""


class HttpService:
    """The scoring service over HTTP (keep-alive, one client shared by the worker threads)."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.client = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
        )

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            r = self.client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ServiceError(
                f"the scoring service at {self.url} did not answer {path} ({exc}); start it "
                "(`matchmaking serve`) or fix --url"
            ) from exc
        if r.status_code != 200:
            raise ServiceError(
                f"the scoring service at {self.url} answered {path} with {r.status_code}: "
                f"{r.text[:500]}"
                + (" (pass its token with --token)" if r.status_code in (401, 403) else "")
            )
        answer = r.json()
        if not isinstance(answer, dict):
            raise ServiceError(f"{self.url}{path} answered {type(answer).__name__}, not an object")
        return answer

    def rank(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._post("/v1/rank", body)

    def post_outcomes(self, outcomes: list[dict[str, Any]]) -> None:
        self._post("/v1/outcomes", {"outcomes": outcomes})

    def close(self) -> None:
        self.client.close()


@dataclass
class ServedSummary:
    """What one served day did."""

    city: str
    day: date
    bookings: int = 0
    no_driver: int = 0
    offers: int = 0
    accepted: int = 0
    completed: int = 0
    rank_calls: int = 0
    outcomes_posted: int = 0
    seconds: float = 0.0
    arms: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    partition: Location | None = None

    def to_text(self) -> str:
        acc = self.accepted / self.offers if self.offers else math.nan
        arms = ", ".join(f"{a} {n}" for a, n in sorted(self.arms.items())) or "-"
        versions = ", ".join(f"v{v} {n}" for v, n in sorted(self.versions.items())) or "-"
        return (
            f"served {self.city} {self.day}: {self.bookings} bookings ({self.no_driver} without "
            f"a free driver), {self.rank_calls} rank calls, {self.offers} offers, "
            f"{self.accepted} accepted ({acc:.1%} of offers), {self.completed} completed; "
            f"{self.outcomes_posted} outcomes posted in {self.seconds:.1f} s\n"
            f"arms: {arms}; versions: {versions}\nraw: {self.partition}"
        )


# -- the day's bookings and candidate pools -----------------------------------------------------


@dataclass(frozen=True)
class _Day:
    """The day's bookings and, per booking, the pool of nearby drivers on shift (rows of a
    booking contiguous, from ``starts[i]`` to ``starts[i + 1]``)."""

    t_min: np.ndarray  # local minutes after midnight, sorted
    hour: np.ndarray
    plat: np.ndarray
    plng: np.ndarray
    dlat: np.ndarray
    dlng: np.ndarray
    trip_km: np.ndarray
    fare: np.ndarray
    trip_min: np.ndarray  # driving time pickup -> dropoff
    starts: np.ndarray
    d: np.ndarray  # roster index of each pool row
    drv_lat: np.ndarray
    drv_lng: np.ndarray
    distance_km: np.ndarray
    true_eta_s: np.ndarray
    eta_s: np.ndarray  # logged, what dispatch sends
    p_accept: np.ndarray  # truth
    p_cancel: np.ndarray
    u_offer: np.ndarray  # (bookings, MAX_OFFERS) uniforms for the drivers' answers
    u_cancel: np.ndarray  # per booking, for the rider


def _simulate_pools(cw: CityWorld, day: date, n: int, seed: int) -> _Day:
    city = cw.city
    ordinal = (day - _EPOCH).days
    rng = rng_for(seed, city.id, _SERVED, ordinal)
    t_min = np.sort(_sample_hours(n, rng) * 60.0 + rng.random(n) * 60.0)
    hour = (t_min // 60).astype(np.int64).clip(0, 23)
    trips = sample_trips(city, cw.zones, cw.speed, hour, rng)
    found = search_candidates(_BucketCache(cw.roster, ordinal * 1440.0), t_min, trips, POOL)
    b, d = found.b, found.d
    plat, plng = to_latlng(city, trips.px, trips.py)
    dlat, dlng = to_latlng(city, found.drv_x, found.drv_y)
    distance_km = haversine_km(dlat, dlng, plat[b], plng[b])
    speed = cw.speed[hour[b]]
    m = len(b)
    true_eta_s = distance_km * CIRCUITY / speed * 3600.0 + rng.lognormal(math.log(25.0), 0.5, m)
    eta_s = np.round(true_eta_s * rng.lognormal(0.0, ETA_LOG_NOISE, m), 1)
    p_accept, p_cancel = true_probabilities(
        cw, trips, hour, b, d, found.drv_x, found.drv_y, found.s_shift, true_eta_s
    )
    drop_lat, drop_lng = to_latlng(city, trips.dx, trips.dy)
    return _Day(
        t_min=t_min,
        hour=hour,
        plat=plat,
        plng=plng,
        dlat=drop_lat,
        dlng=drop_lng,
        trip_km=np.round(trips.trip_km, 3),
        fare=trips.fare,
        trip_min=trips.trip_km / cw.speed[hour] * 60.0,
        starts=np.searchsorted(b, np.arange(n + 1)),
        d=d,
        drv_lat=dlat,
        drv_lng=dlng,
        distance_km=distance_km,
        true_eta_s=true_eta_s,
        eta_s=eta_s,
        p_accept=p_accept,
        p_cancel=p_cancel,
        u_offer=rng.random((n, MAX_OFFERS)),
        u_cancel=rng.random(n),
    )


def _candidates(day: _Day, i: int, busy_until: np.ndarray) -> np.ndarray:
    """Pool rows of booking ``i`` that dispatch considers: free drivers, the radius widened
    1 -> 2 -> 3 km while fewer than ``MIN_CANDIDATES`` are found, the ``MAX_CANDIDATES``
    nearest by logged ETA (ties: pool order)."""
    rows = np.arange(day.starts[i], day.starts[i + 1])
    rows = rows[busy_until[day.d[rows]] <= day.t_min[i]]
    dist = day.distance_km[rows]
    radius = SEARCH_RADII_KM[-1]
    for r in SEARCH_RADII_KM[:-1]:
        if int((dist <= r).sum()) >= MIN_CANDIDATES:
            radius = r
            break
    rows = rows[dist <= radius]
    return rows[np.argsort(day.eta_s[rows], kind="stable")][:MAX_CANDIDATES]


# -- one booking ---------------------------------------------------------------------------------


@dataclass
class _Served:
    """What happened to one booking: the rows sent, the answer, the offers' outcomes."""

    rows: np.ndarray
    answer: dict[str, Any] | None = None
    order: list[int] = field(default_factory=list)  # pool rows in the served order
    first_p: dict[int, float] = field(default_factory=dict)
    cond_p: dict[int, float] = field(default_factory=dict)
    offered: list[int] = field(default_factory=list)
    accepted_row: int = -1
    cancelled: bool = False


def _iso(cw: CityWorld, day: date, t_min: float) -> str:
    midnight = datetime.combine(day, dtime(0), tzinfo=ZoneInfo(cw.city.tz))
    return (midnight + timedelta(minutes=float(t_min))).isoformat(timespec="milliseconds")


def _body(cw: CityWorld, day: date, d: _Day, i: int, booking_id: str, rows: np.ndarray) -> dict:
    """The ``/v1/rank`` request of booking ``i``: only what a dispatch service knows."""
    roster = cw.roster
    home_lat, home_lng = to_latlng(cw.city, roster.home_x[d.d[rows]], roster.home_y[d.d[rows]])
    return {
        "booking": {
            "booking_id": booking_id,
            "city": cw.city.id,
            "pickup": {"lat": float(d.plat[i]), "lng": float(d.plng[i])},
            "dropoff": {"lat": float(d.dlat[i]), "lng": float(d.dlng[i])},
            "requested_at": _iso(cw, day, d.t_min[i]),
            "trip_km": float(d.trip_km[i]),
            "fare": float(d.fare[i]),
        },
        "candidates": [
            {
                "driver_id": roster.driver_id[int(d.d[r])],
                "location": {"lat": float(d.drv_lat[r]), "lng": float(d.drv_lng[r])},
                "rating": float(roster.rating[int(d.d[r])]),
                "home": {"lat": float(home_lat[k]), "lng": float(home_lng[k])},
                "eta_seconds": float(d.eta_s[r]),
            }
            for k, r in enumerate(rows)
        ],
    }


def read_answer(
    answer: dict[str, Any], sent: dict[str, int], url: str
) -> tuple[list[int], dict[int, float], dict[int, float]]:
    """The served order (pool rows) and its propensities from a ``/v1/rank`` answer.

    Raises:
        ConfigError: the answer lacks the fields of the decision log (a service older than
            issue 13), or it served a deterministic order (a zero ``first_propensity``).
        ServiceError: the answer does not rank exactly the candidates sent.
    """
    ranked = answer.get("candidates")
    missing = [f for f in ANSWER_FIELDS if f not in answer]
    if isinstance(ranked, list):
        absent = {f"candidates[].{f}" for c in ranked for f in CANDIDATE_FIELDS if f not in c}
        missing += sorted(absent)
    if missing or not isinstance(ranked, list):
        raise ConfigError(
            f"the scoring service at {url} answered /v1/rank without "
            f"{', '.join(missing) or 'candidates'}: it predates the decision log and exploration "
            "(issue 13). `world dispatch` needs the propensities of the order it is served; "
            "run a scoring service that returns them"
        )
    ordered = sorted(ranked, key=lambda c: int(c["rank"]))
    order, first_p, cond_p = [], {}, {}
    for c in ordered:
        row = sent.get(str(c["driver_id"]))
        if row is None or row in first_p:
            raise ServiceError(
                f"{url}/v1/rank ranked driver {c['driver_id']!r}, which was not sent (or twice)"
            )
        order.append(row)
        first_p[row] = float(c["first_propensity"])
        cond_p[row] = float(c["propensity"])
    if len(order) != len(sent):
        raise ServiceError(f"{url}/v1/rank ranked {len(order)} of the {len(sent)} candidates sent")
    if min(first_p.values()) <= 0.0:
        raise ConfigError(
            f"the scoring service at {url} served {answer.get('policy')!r} with a zero "
            "first_propensity for some candidates: a deterministic order, whose log supports no "
            "off-policy estimate, and which `process` quarantines (bad_propensity). Turn "
            "exploration on for the city (MATCHMAKING_SERVE_EXPLORATION=<city>=<T> or the "
            "registered-model tag serving.exploration_temperature, docs/serving.md) and rerun"
        )
    return order, first_p, cond_p


# -- the day -------------------------------------------------------------------------------------


def _outcome(
    booking_id: str,
    driver_id: str,
    position: int,
    stage: str,
    outcome: str,
    at: datetime,
    city: str,
    request_id: str | None,
) -> dict[str, Any]:
    return {
        "booking_id": booking_id,
        "driver_id": driver_id,
        "position": position,
        "stage": stage,
        "outcome": outcome,
        "occurred_at": at.astimezone(UTC).isoformat(timespec="milliseconds"),
        "city": city,
        "request_id": request_id,
    }


def play_day(
    cw: CityWorld,
    day: date,
    n_bookings: int,
    seed: int,
    service: Service,
    url: str = "",
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[_Day, list[_Served], list[str], ServedSummary]:
    """Serve the day's bookings through ``service`` in time order (see the module docstring).

    Returns the day's pools, each booking's ``_Served``, the booking ids and the summary; the
    tables are ``served_tables``'.
    """
    started = time.perf_counter()
    d = _simulate_pools(cw, day, n_bookings, seed)
    n = len(d.t_min)
    city = cw.city.id
    midnight = datetime.combine(day, dtime(0), tzinfo=ZoneInfo(cw.city.tz))
    stamp = day.strftime("%Y%m%d")
    ids = [f"{city}-{stamp}-{i:07d}" for i in range(n)]
    busy_until = np.full(len(cw.roster), -np.inf)
    waiting: Counter[int] = Counter()  # roster index -> unresolved bookings whose pool holds it
    served: list[_Served | None] = [None] * n
    summary = ServedSummary(city, day, bookings=n)
    pending: list[dict[str, Any]] = []
    posts: list[Future[None]] = []
    window = max(1, workers * 2)

    def resolve(i: int, s: _Served) -> None:
        t0 = midnight + timedelta(minutes=float(d.t_min[i]))
        request_id = s.answer.get("request_id") if s.answer else None
        for k, row in enumerate(s.order[:MAX_OFFERS]):
            s.offered.append(row)
            driver = cw.roster.driver_id[int(d.d[row])]
            at = t0 + timedelta(seconds=OFFER_SECONDS * k + 5.0)
            accepts = bool(d.u_offer[i, k] < d.p_accept[row])
            pending.append(
                _outcome(
                    ids[i],
                    driver,
                    k + 1,
                    "offer",
                    "accepted" if accepts else "declined",
                    at,
                    city,
                    request_id,
                )
            )
            if not accepts:
                continue
            s.accepted_row = row
            s.cancelled = bool(d.u_cancel[i] < d.p_cancel[row])
            pickup_min = d.t_min[i] + d.true_eta_s[row] / 60.0
            end_min = pickup_min if s.cancelled else pickup_min + d.trip_min[i]
            busy_until[d.d[row]] = end_min
            pending.append(
                _outcome(
                    ids[i],
                    driver,
                    k + 1,
                    "trip",
                    "rider_cancelled" if s.cancelled else "completed",
                    midnight + timedelta(minutes=float(end_min)),
                    city,
                    request_id,
                )
            )
            break
        served[i] = s

    def ask(i: int, s: _Served) -> _Served:
        s.answer = service.rank(_body(cw, day, d, i, ids[i], s.rows))
        sent = {cw.roster.driver_id[int(d.d[r])]: int(r) for r in s.rows}
        s.order, s.first_p, s.cond_p = read_answer(s.answer, sent, url)
        return s

    inflight: dict[Future[_Served], int] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="dispatch") as pool:
        try:
            nxt = 0
            while nxt < n or inflight:
                while nxt < n and len(inflight) < window:
                    pool_d = d.d[d.starts[nxt] : d.starts[nxt + 1]]
                    if any(waiting[int(x)] for x in pool_d):
                        break  # an earlier booking may still make one of its drivers busy
                    rows = _candidates(d, nxt, busy_until)
                    if len(rows) == 0:
                        served[nxt] = _Served(rows)
                        summary.no_driver += 1
                    else:
                        for x in pool_d:
                            waiting[int(x)] += 1
                        inflight[pool.submit(ask, nxt, _Served(rows))] = nxt
                    nxt += 1
                if not inflight:
                    continue
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = inflight.pop(fut)
                    resolve(i, fut.result())
                    for x in d.d[d.starts[i] : d.starts[i + 1]]:
                        waiting[int(x)] -= 1
                    summary.rank_calls += 1
                    if progress:
                        progress(summary.rank_calls, n)
                if len(pending) >= OUTCOME_BATCH:
                    batch, pending[:] = list(pending), []
                    posts.append(pool.submit(service.post_outcomes, batch))
                    summary.outcomes_posted += len(batch)
            if pending:
                posts.append(pool.submit(service.post_outcomes, list(pending)))
                summary.outcomes_posted += len(pending)
            for post in posts:
                post.result()
        except BaseException:
            for fut in inflight:
                fut.cancel()
            raise
    out = [s if s is not None else _Served(np.zeros(0, np.int64)) for s in served]
    for s in out:
        if s.answer is not None:
            summary.arms[str(s.answer.get("arm"))] += 1
            summary.versions[str(s.answer.get("version"))] += 1
        summary.offers += len(s.offered)
        summary.accepted += int(s.accepted_row >= 0)
        summary.completed += int(s.accepted_row >= 0 and not s.cancelled)
    summary.seconds = time.perf_counter() - started
    return d, out, ids, summary


def served_tables(
    cw: CityWorld, day: date, d: _Day, served: list[_Served], ids: list[str]
) -> dict[str, pa.Table]:
    """``bookings``, ``candidates`` (raw contract) and ``ground_truth`` (truth) of the day."""
    city = cw.city
    n = len(served)
    midnight = datetime.combine(day, dtime(0), tzinfo=ZoneInfo(city.tz))
    midnight_utc_us = round(midnight.timestamp()) * 1_000_000
    ts_us = midnight_utc_us + np.round(d.t_min * 60e6).astype(np.int64)
    status, policy, version, assigned, n_cand, n_offers = [], [], [], [], [], []
    c_b, c_rows, c_first, c_cond, c_order, c_acc = [], [], [], [], [], []
    for i, s in enumerate(served):
        n_cand.append(len(s.rows))
        n_offers.append(len(s.offered))
        if s.answer is None:
            policy.append("none")
            version.append("none")
        else:
            policy.append(str(s.answer["policy"]))
            version.append(str(s.answer["version"]) if s.answer["version"] else "fallback")
        if len(s.rows) == 0:
            status.append("no_driver")
        elif s.accepted_row < 0:
            status.append("expired")
        else:
            status.append("rider_cancelled" if s.cancelled else "completed")
        assigned.append(
            cw.roster.driver_id[int(d.d[s.accepted_row])] if s.accepted_row >= 0 else None
        )
        position = {row: k + 1 for k, row in enumerate(s.offered)}
        for row in s.rows:  # by logged ETA, as sent
            c_b.append(i)
            c_rows.append(int(row))
            c_first.append(s.first_p[int(row)])
            k = position.get(int(row), 0)
            c_order.append(k)
            c_cond.append(s.cond_p[int(row)] if k else None)
            c_acc.append((int(row) == s.accepted_row) if k else None)
    booking_ids = pa.array(ids, type=pa.string())
    requested_at = pa.array(ts_us, type=UTC_TS)
    bookings = pa.Table.from_arrays(
        [
            booking_ids,
            pa.repeat(pa.scalar(city.id, pa.string()), n),
            requested_at,
            pa.array(d.plat),
            pa.array(d.plng),
            pa.array(d.dlat),
            pa.array(d.dlng),
            pa.array(d.trip_km),
            pa.array(d.fare),
            pa.repeat(pa.scalar(city.currency, pa.string()), n),
            pa.array(np.asarray(n_cand, dtype=np.int16)),
            pa.array(np.asarray(n_offers, dtype=np.int16)),
            pa.array(status, type=pa.string()),
            pa.array(assigned, type=pa.string()),
            pa.array(policy, type=pa.string()),
            pa.array(version, type=pa.string()),
        ],
        schema=BOOKINGS,
    )
    b = np.asarray(c_b, dtype=np.int64)
    rows = np.asarray(c_rows, dtype=np.int64)
    offered = np.asarray(c_order, dtype=np.int64) > 0
    eta_rank = group_rank(b, np.lexsort((d.eta_s[rows], b))) if len(b) else np.zeros(0)
    b_idx = pa.array(b)
    cand_booking = booking_ids.take(b_idx)
    cand_driver = cw.driver_ids.take(pa.array(d.d[rows]))
    candidates = pa.Table.from_arrays(
        [
            cand_booking,
            cand_driver,
            requested_at.take(b_idx),
            pa.array(d.drv_lat[rows]),
            pa.array(d.drv_lng[rows]),
            pa.array(np.round(d.distance_km[rows], 4)),
            pa.array(d.eta_s[rows]),
            pa.array(np.asarray(eta_rank, dtype=np.int16)),
            pa.array(offered),
            pa.array(np.asarray(c_order, dtype=np.int16)),
            pa.array(c_acc, type=pa.bool_()),
            pa.array(np.asarray(c_first, dtype=np.float64)),
            pa.array(c_cond, type=pa.float64()),
        ],
        schema=CANDIDATES,
    )
    ground_truth = pa.Table.from_arrays(
        [cand_booking, cand_driver, pa.array(d.p_accept[rows]), pa.array(d.p_cancel[rows])],
        schema=GROUND_TRUTH,
    )
    return {"bookings": bookings, "candidates": candidates, "ground_truth": ground_truth}


def _roster_in_lake(out: Location, cw: CityWorld) -> None:
    """The lake's roster of the city must be this world's (same seed and volume), else the
    served day would name drivers the history has never seen; a city without one gets it."""
    path = storage.join(lake.city_dir(out, lake.RAW, cw.city.id), lake.DRIVERS_FILE)
    raw, hidden = drivers_tables(cw)
    if not storage.exists(path):
        lake.write_file_atomic(
            storage.join(lake.city_dir(out, lake.TRUTH, cw.city.id), lake.DRIVERS_FILE), hidden
        )
        lake.write_file_atomic(path, raw)
        return
    found = lake.read_drivers(out, cw.city.id)
    if not found.equals(raw):
        raise InputError(
            f"the lake's roster of {cw.city.id} ({found.num_rows} drivers) is not the one this "
            f"world builds ({raw.num_rows}, other homes or ratings): pass the --seed and --scale "
            "(or --bookings-per-day) that `world generate` used for this lake"
        )


@dataclass(frozen=True)
class DispatchRequest:
    """What ``world dispatch`` was asked."""

    city: str
    day: date
    url: str
    out: LocationLike
    token: str | None = None
    seed: int = 42
    scale: float = 0.002
    bookings_per_day: int | None = None
    workers: int = 4
    replace: bool = False


def dispatch_day(
    req: DispatchRequest,
    service: Service | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ServedSummary:
    """``matchmaking world dispatch``: serve one city-day through the scoring service and
    write its truth and raw partitions (``service``: default the HTTP client of ``req.url``).

    Raises:
        UnknownCityError, InputError: bad arguments, a roster that is not this world's, or a
            day already in the lake (without ``replace``); nothing is sent.
        ConfigError: the service's answers lack the decision log's fields or explore nothing.
        ServiceError: the service is unreachable or refused a request.
        StorageError: the lake cannot be written (nothing is published).
    """
    market = get_market(req.city)
    if not (math.isfinite(req.scale) and req.scale > 0):
        raise InputError(f"scale must be a positive number, got {req.scale}")
    if req.seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {req.seed}")
    out = storage.location(req.out)
    lake.ensure_writable(out)
    partition = lake.partition_dir(out, lake.RAW, market.id, req.day)
    if lake.is_complete(partition) and not req.replace:
        raise InputError(
            f"{partition} already holds {market.id} {req.day}: serving it again would log a "
            "second set of decisions for other bookings; pick another --date or pass --replace"
        )
    base = float(req.bookings_per_day or market.daily_bookings * req.scale)
    cw = build_city(market, req.seed, base)
    _roster_in_lake(out, cw)
    n = bookings_for_day(cw, req.day, req.bookings_per_day)
    own = service is None
    client = service or HttpService(req.url, req.token)
    try:
        d, served, ids, summary = play_day(
            cw, req.day, n, req.seed, client, req.url, req.workers, progress
        )
    finally:
        if own and isinstance(client, HttpService):
            client.close()
    tables = served_tables(cw, req.day, d, served, ids)
    truth = {"ground_truth": tables["ground_truth"]}
    lake.write_partition(out, lake.TRUTH, market.id, req.day, truth)
    summary.partition = lake.write_partition(
        out,
        lake.RAW,
        market.id,
        req.day,
        {"bookings": tables["bookings"], "candidates": tables["candidates"]},
    )
    logger.info("%s", summary.to_text().splitlines()[0])
    return summary
