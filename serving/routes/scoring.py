"""``POST /v1/rank`` and ``POST /v1/match``: read and decode the body, hand it to the pure
steps of ``serving.scoring``, record latency, answer JSON.

``handle_rank`` is also what the ASGI hot path (``serving.hotpath``) calls for ``/v1/rank``.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response

from matchmaking.registry.conventions import CHALLENGER_SPLIT
from serving import policy, scoring
from serving.bodies import body_schema, json_response, read_json_body
from serving.decisions import Decision, Shadow
from serving.deps import Service, ServiceDep
from serving.errors import ERROR_RESPONSES, FieldErrors
from serving.models import LoadedModel
from serving.schemas import (
    MatchRequest,
    MatchResponse,
    RankRequest,
    RankResponse,
    decode_match,
    decode_rank,
)
from serving.shards import CITY_HEADER

logger = logging.getLogger(__name__)

router = APIRouter(tags=["scoring"])

#: The sharded routes: the city in the path, for an ingress to route on (``serving.shards``).
CITY_PREFIX = "/v1/cities/"
CITY_RANK = "/v1/cities/{city}/rank"
CITY_MATCH = "/v1/cities/{city}/match"


def rank_route(path: str) -> str | None:
    """The rank route template ``path`` matches (the hot path's router), else None."""
    if path == "/v1/rank":
        return path
    if path.startswith(CITY_PREFIX) and path.endswith("/rank") and path.count("/") == 4:
        return CITY_RANK
    return None


def check_route(request: Request, city: str, loc: list[str | int]) -> None:
    """The city a router saw (the path's, the ``X-Matchmaking-City`` header) must be the
    body's: a request routed to one city's pool never scores another city.

    Raises:
        FieldErrors: 422 naming the body's city field.
    """
    path = request.scope["path"]
    problems = []
    if path.startswith(CITY_PREFIX):
        named = path.split("/")[3]
        if named != city:
            problems.append(f"is {city!r}, but the path names {named!r}")
    header = request.headers.get(CITY_HEADER)
    if header is not None and header.strip() != city:
        problems.append(f"is {city!r}, but the {CITY_HEADER} header names {header.strip()!r}")
    if problems:
        raise FieldErrors([{"loc": loc, "msg": m, "type": "city_mismatch"} for m in problems])


def request_id_of(request: Request) -> str:
    """The request id the middleware set (the caller's ``X-Request-ID``, else a new one)."""
    rid = request.scope.get("state", {}).get("request_id")
    return str(rid) if rid else os.urandom(16).hex()


async def handle_rank(request: Request, service: Service) -> Response:
    """``/v1/rank``: the city's model (or its challenger, for the challenger's share of
    bookings) ranks the candidates; without a servable model, the nearest-ETA fallback when
    enabled, else the model error. The answer is queued for the decision log."""
    started = time.perf_counter()
    settings = service.settings
    job = scoring.rank_job(
        decode_rank(await read_json_body(request, settings.max_body_bytes)), settings
    )
    city = job.city.id
    check_route(request, city, ["booking", "city"])
    rid = request_id_of(request)
    shadow: LoadedModel | None = None
    ranked: scoring.Ranked | None = None
    try:
        model = await service.model_for(city)
    except scoring.FALLBACK_ERRORS as exc:
        if not settings.fallback_nearest_eta:
            raise
        body = scoring.rank_nearest_eta(job, rid)
        service.metrics.fallbacks.labels(city).inc()
        logger.warning("fallback ranking for %s: %s", city, exc)
        log_extra: dict[str, object] = {"city": city, "fallback": True}
        arm = "fallback"
    else:
        traffic = service.require_store().traffic(city)
        arm = "champion"
        challenger = traffic.challenger
        if (
            challenger is not None
            and traffic.share > 0.0
            and policy.booking_hash(job.booking.booking_id) < traffic.share
        ):
            if traffic.mode == CHALLENGER_SPLIT:
                model, arm = challenger, "challenger"
            else:
                shadow = challenger
        body, ranked = scoring.rank_answer(job, model, rid, arm, traffic.temperature)
        log_extra = {"city": city, "model_version": model.version, "arm": arm}
    service.metrics.latency.labels("rank", city).observe(time.perf_counter() - started)
    service.metrics.answers.labels(
        city, arm, body["model_scope"], body["model"] or "", body["version"] or ""
    ).inc()
    request.scope["state"]["log_extra"] = log_extra
    log = service.log
    if log is not None:
        decided_at = datetime.now(UTC)
        if ranked is None:  # the fallback's answer: logged from its body
            log.decision(Decision("rank", rid, decided_at, body, arm))
        else:
            log.decision(Decision.ranking(rid, decided_at, body, arm, ranked))
        if shadow is not None:
            service.metrics.answers.labels(
                city, "shadow", shadow.scope, shadow.name, shadow.version
            ).inc()
            log.decision(_shadow_scoring(job, shadow, rid, decided_at))
    return json_response(body)


def _shadow_scoring(job: scoring.RankJob, model: LoadedModel, rid: str, at: datetime) -> Shadow:
    """The challenger's ranking of the same request, for the writer thread (never answered)."""

    def run() -> Decision:
        body, ranked = scoring.rank_answer(job, model, rid, "shadow", None)
        return Decision.ranking(rid, at, body, "shadow", ranked, served=False)

    return run


async def handle_match(request: Request, service: Service) -> Response:
    """``/v1/match``: batch assignment over the city's model's scores."""
    started = time.perf_counter()
    settings = service.settings
    job = scoring.match_job(
        decode_match(await read_json_body(request, settings.max_body_bytes)), settings
    )
    check_route(request, job.city.id, ["city"])
    model = await service.model_for(job.city.id)
    rid = request_id_of(request)
    body = scoring.match(job, model, rid)
    service.metrics.latency.labels("match", job.city.id).observe(time.perf_counter() - started)
    request.scope["state"]["log_extra"] = {"city": job.city.id, "model_version": model.version}
    if service.log is not None:
        service.log.decision(Decision("match", rid, datetime.now(UTC), body, "champion"))
    return json_response(body)


@router.post(
    "/v1/rank",
    response_model=RankResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=body_schema(RankRequest),
)
async def rank(request: Request, service: ServiceDep) -> Response:
    """Rank a booking's candidate drivers, best first."""
    return await handle_rank(request, service)


@router.post(
    CITY_RANK,
    response_model=RankResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=body_schema(RankRequest),
)
async def rank_in_city(city: str, request: Request, service: ServiceDep) -> Response:
    """``/v1/rank`` with the city in the path, for an ingress that routes cities to pools
    (the body's ``booking.city`` must be the same city)."""
    return await handle_rank(request, service)


@router.post(
    CITY_MATCH,
    response_model=MatchResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=body_schema(MatchRequest),
)
async def match_in_city(city: str, request: Request, service: ServiceDep) -> Response:
    """``/v1/match`` with the city in the path (the body's ``city`` must be the same)."""
    return await handle_match(request, service)


@router.post(
    "/v1/match",
    response_model=MatchResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=body_schema(MatchRequest),
)
async def match(request: Request, service: ServiceDep) -> Response:
    """Assign drivers to several open bookings of one city, maximising the total predicted
    acceptance, each driver at most once (Hungarian algorithm over the model's scores)."""
    return await handle_match(request, service)
