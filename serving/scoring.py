"""The scoring steps, without HTTP: check a decoded request, rank, fall back, match.

The model is the city's own or its country's pooled one (``LoadedModel.scope``: the answer's
``model_scope``); either builds its input for the request's market (``LoadedModel.features``).

``rank_job`` / ``match_job`` check what the schema cannot (configured limits, duplicate ids,
coordinates inside the city; ``FieldErrors`` names every offending field) and turn the request
into the online feature inputs. ``rank`` scores them with a city's model; ``rank_nearest_eta``
is the fallback ranking when the city has no servable model (``FALLBACK_ERRORS``, when
enabled). ``match`` assigns drivers to several bookings with the library's batch dispatch
(``matchmaking.evaluation.matching.dispatch``). Each returns the response body as a dict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from matchmaking.errors import ModelNotFoundError, TrackingError
from matchmaking.evaluation.matching import UNASSIGNED, dispatch
from matchmaking.features.core import FloatArray, estimate_eta_seconds
from matchmaking.features.geo import haversine_km
from matchmaking.features.online import OnlineBooking, OnlineCandidates, local_clock
from matchmaking.markets import Market, get_market
from matchmaking.schema import FEATURE_NAMES
from serving import policy
from serving.errors import FieldErrors
from serving.models import LoadedModel
from serving.schemas import Booking, Candidate, MatchDriver, MatchRequest, RankRequest
from serving.settings import ServeSettings

ETA_COLUMN = FEATURE_NAMES.index("eta_min")
# What a city's model failing to load may be answered with (the nearest-ETA ranking), when
# ``fallback_nearest_eta`` is on: no Production model, or a registry that cannot be reached.
FALLBACK_ERRORS = (ModelNotFoundError, TrackingError)


# -- checks -----------------------------------------------------------------------------------


def _detail(loc: Sequence[str | int], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": list(loc), "msg": msg, "type": kind}


def check_positions(
    city: Market,
    lat: FloatArray,
    lng: FloatArray,
    loc_of: Callable[[int], list[str | int]],
    limit_km: float,
) -> list[dict[str, Any]]:
    """Field errors for the points farther than ``limit_km`` from the city centre.

    ``loc_of(i)`` names point ``i`` in the body, e.g. ``["candidates", 3, "home"]``.
    """
    km = haversine_km(lat, lng, np.full_like(lat, city.lat), np.full_like(lng, city.lng))
    return [
        _detail(
            loc_of(i),
            f"is {km[i]:.1f} km from the centre of {city.id}; the limit is {limit_km:g} km",
            "out_of_city",
        )
        for i in np.flatnonzero(km > limit_km).tolist()
    ]


def check_unique(ids: Sequence[str], where: str, field: str) -> list[dict[str, Any]]:
    """Field errors for every repeated id (the first occurrence is fine)."""
    seen: set[str] = set()
    out = []
    for i, v in enumerate(ids):
        if v in seen:
            out.append(_detail([where, i, field], f"duplicate {field} {v!r}", "duplicate"))
        seen.add(v)
    return out


def check_count(n: int, limit: int, where: str) -> list[dict[str, Any]]:
    if n > limit:
        return [_detail([where], f"{n} items; at most {limit} are allowed", "too_long")]
    return []


def raise_if(details: list[dict[str, Any]]) -> None:
    if details:
        raise FieldErrors(details)


# -- online inputs ----------------------------------------------------------------------------


def online_booking(b: Booking | Any) -> OnlineBooking:
    return OnlineBooking(
        pickup_lat=b.pickup.lat,
        pickup_lng=b.pickup.lng,
        dropoff_lat=b.dropoff.lat,
        dropoff_lng=b.dropoff.lng,
        requested_at=b.requested_at,
        trip_km=b.trip_km,
        fare=b.fare,
    )


def online_candidates(candidates: Sequence[Candidate] | Sequence[MatchDriver]) -> OnlineCandidates:
    """Candidate rows of one booking (booking index 0), as flat arrays."""
    n = len(candidates)
    flat = np.array(
        [
            (
                c.location.lat,
                c.location.lng,
                c.rating,
                c.home.lat,
                c.home.lng,
                _eta(c),
            )
            for c in candidates
        ],
        dtype=np.float64,
    ).reshape(n, 6)
    return OnlineCandidates(
        booking=np.zeros(n, dtype=np.int64),
        driver_id=[c.driver_id for c in candidates],
        lat=flat[:, 0],
        lng=flat[:, 1],
        rating=flat[:, 2],
        home_lat=flat[:, 3],
        home_lng=flat[:, 4],
        eta_seconds=flat[:, 5],
    )


def _eta(c: Candidate | MatchDriver) -> float:
    eta = c.eta_seconds if isinstance(c, Candidate) else None
    return math.nan if eta is None else eta


def ranking(
    driver_ids: Sequence[str],
    scores: FloatArray,
    eta_seconds: FloatArray,
    served: policy.Order | None = None,
) -> list[dict[str, Any]]:
    """Candidates in the served order (default: greedy, best first, ties in the request's
    order), with 1-based ranks and the order's propensities."""
    served = served or policy.greedy(scores)
    order = served.order
    return [
        {
            "driver_id": driver_ids[i],
            "rank": r,
            "score": s,
            "eta_seconds": e,
            "first_propensity": f,
            "propensity": p,
        }
        for r, (i, s, e, f, p) in enumerate(
            zip(
                order.tolist(),
                scores[order].tolist(),
                eta_seconds[order].tolist(),
                served.first_propensity.tolist(),
                served.propensity.tolist(),
                strict=True,
            ),
            start=1,
        )
    ]


# -- /v1/rank ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankJob:
    """A checked ranking request: its city, its booking, its candidates as arrays."""

    city: Market
    booking: Booking
    rows: OnlineCandidates


def rank_job(req: RankRequest, settings: ServeSettings) -> RankJob:
    """Check a ranking request against the configured limits and the city.

    Raises:
        UnknownCityError: the city is not in the catalogue.
        FieldErrors: too many candidates, duplicate drivers, points outside the city.
    """
    b = req.booking
    cands = req.candidates
    city = get_market(b.city)
    details = check_count(len(cands), settings.max_candidates, "candidates")
    details += check_unique([c.driver_id for c in cands], "candidates", "driver_id")
    rows = online_candidates(cands)
    n = len(cands)

    def where(i: int) -> list[str | int]:
        if i < 2:
            return ["booking", ("pickup", "dropoff")[i]]
        i -= 2
        return ["candidates", i % n, "location" if i < n else "home"]

    lat = np.concatenate([[b.pickup.lat, b.dropoff.lat], rows.lat, rows.home_lat])
    lng = np.concatenate([[b.pickup.lng, b.dropoff.lng], rows.lng, rows.home_lng])
    details += check_positions(city, lat, lng, where, settings.max_km_from_city)
    raise_if(details)
    return RankJob(city, b, rows)


@dataclass(frozen=True)
class Ranked:
    """The served order of one ranking as arrays (what the decision log stores), beside the
    answer's list of candidates."""

    driver_id: list[str]
    score: FloatArray
    eta_seconds: FloatArray
    first_propensity: FloatArray
    propensity: FloatArray


def rank(
    job: RankJob,
    model: LoadedModel,
    request_id: str = "",
    arm: str = "champion",
    temperature: float | None = None,
) -> dict[str, Any]:
    """The candidates ranked by the model's scores: best first, or sampled by Plackett-Luce
    when ``temperature`` > 0 (``serving.policy``), with the served order's propensities."""
    return rank_answer(job, model, request_id, arm, temperature)[0]


def rank_answer(
    job: RankJob,
    model: LoadedModel,
    request_id: str = "",
    arm: str = "champion",
    temperature: float | None = None,
) -> tuple[dict[str, Any], Ranked]:
    """``rank``'s answer, and the served order as arrays."""
    matrix = model.features(job.city, [online_booking(job.booking)], job.rows)
    scores = model.predict(matrix)
    served = policy.serve_order(
        scores, model.ref.score_kind == "probability", temperature, request_id
    )
    eta = matrix[:, ETA_COLUMN] * 60.0
    order = served.order
    ranked = Ranked(
        [job.rows.driver_id[i] for i in order.tolist()],
        scores[order],
        eta[order],
        served.first_propensity,
        served.propensity,
    )
    return {
        "request_id": request_id,
        "booking_id": job.booking.booking_id,
        "city": job.city.id,
        "model": model.name,
        "version": model.version,
        "score_kind": model.ref.score_kind,
        "fallback": False,
        "arm": arm,
        "model_scope": model.scope,
        "policy": served.policy,
        "temperature": served.temperature,
        "candidates": ranking(job.rows.driver_id, scores, eta, served),
    }, ranked


def rank_nearest_eta(job: RankJob, request_id: str = "") -> dict[str, Any]:
    """The fallback ranking: nearest ETA first (given, else estimated at the hour's speed),
    no scores, flagged ``fallback``."""
    b, rows, city = job.booking, job.rows, job.city
    minute, _ = local_clock(b.requested_at, city.tz)
    km = haversine_km(
        rows.lat,
        rows.lng,
        np.full(len(rows.lat), b.pickup.lat),
        np.full(len(rows.lat), b.pickup.lng),
    )
    estimated = estimate_eta_seconds(km, np.full(len(km), city.speed_at(int(minute // 60))))
    eta = np.where(np.isnan(rows.eta_seconds), estimated, rows.eta_seconds)
    ranked = ranking(rows.driver_id, -eta, eta)
    for r in ranked:
        r["score"] = None
    return {
        "request_id": request_id,
        "booking_id": b.booking_id,
        "city": city.id,
        "model": None,
        "version": None,
        "score_kind": "nearest_eta",
        "fallback": True,
        "arm": "fallback",
        "model_scope": "fallback",
        "policy": policy.GREEDY,
        "temperature": None,
        "candidates": ranked,
    }


# -- /v1/match --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchJob:
    """A checked matching request: its city, bookings, and the drivers as arrays."""

    city: Market
    request: MatchRequest
    drivers: OnlineCandidates


def match_job(req: MatchRequest, settings: ServeSettings) -> MatchJob:
    """Check a matching request against the configured limits and the city.

    Raises:
        UnknownCityError: the city is not in the catalogue.
        FieldErrors: too many bookings or drivers, duplicate ids, points outside the city.
    """
    city = get_market(req.city)
    details = check_count(len(req.bookings), settings.max_bookings, "bookings")
    details += check_count(len(req.drivers), settings.max_candidates, "drivers")
    details += check_unique([x.booking_id for x in req.bookings], "bookings", "booking_id")
    details += check_unique([d.driver_id for d in req.drivers], "drivers", "driver_id")
    bks = req.bookings
    n_b, n_d = len(bks), len(req.drivers)
    one = online_candidates(req.drivers)

    def where(i: int) -> list[str | int]:
        if i < 2 * n_b:
            return ["bookings", i % n_b, "pickup" if i < n_b else "dropoff"]
        i -= 2 * n_b
        return ["drivers", i % n_d, "location" if i < n_d else "home"]

    lat = np.concatenate(
        [[x.pickup.lat for x in bks], [x.dropoff.lat for x in bks], one.lat, one.home_lat]
    )
    lng = np.concatenate(
        [[x.pickup.lng for x in bks], [x.dropoff.lng for x in bks], one.lng, one.home_lng]
    )
    details += check_positions(city, lat, lng, where, settings.max_km_from_city)
    raise_if(details)
    return MatchJob(city, req, one)


def match(job: MatchJob, model: LoadedModel, request_id: str = "") -> dict[str, Any]:
    """Drivers assigned to the bookings, maximising the total predicted acceptance, each
    driver at most once (``dispatch``: Hungarian over the model's scores)."""
    req, one = job.request, job.drivers
    n_b, n_d = len(req.bookings), len(req.drivers)
    rows = OnlineCandidates(
        booking=np.repeat(np.arange(n_b, dtype=np.int64), n_d),
        driver_id=[d.driver_id for d in req.drivers] * n_b,
        lat=np.tile(one.lat, n_b),
        lng=np.tile(one.lng, n_b),
        rating=np.tile(one.rating, n_b),
        home_lat=np.tile(one.home_lat, n_b),
        home_lng=np.tile(one.home_lng, n_b),
        eta_seconds=np.full(n_b * n_d, np.nan),
    )
    matrix = model.features(job.city, [online_booking(x) for x in req.bookings], rows)
    scores = model.predict(matrix).reshape(n_b, n_d)
    eta = (matrix[:, ETA_COLUMN] * 60.0).reshape(n_b, n_d)
    assigned, value = dispatch(scores, probabilistic=model.ref.score_kind == "probability")
    out: list[dict[str, Any]] = []
    total = 0.0
    for i, j in enumerate(assigned.tolist()):
        if j == UNASSIGNED:
            out.append(
                {
                    "booking_id": req.bookings[i].booking_id,
                    "driver_id": None,
                    "score": None,
                    "eta_seconds": None,
                }
            )
        else:
            total += float(value[i, j])
            out.append(
                {
                    "booking_id": req.bookings[i].booking_id,
                    "driver_id": req.drivers[j].driver_id,
                    "score": float(scores[i, j]),
                    "eta_seconds": float(eta[i, j]),
                }
            )
    return {
        "request_id": request_id,
        "city": job.city.id,
        "model": model.name,
        "version": model.version,
        "score_kind": model.ref.score_kind,
        "total_score": total,
        "arm": "champion",
        "model_scope": model.scope,
        "policy": policy.GREEDY,
        "temperature": None,
        "assignments": out,
    }
