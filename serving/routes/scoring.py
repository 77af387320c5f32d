"""``POST /v1/rank`` and ``POST /v1/match``: read and decode the body, hand it to the pure
steps of ``serving.scoring``, record latency, answer JSON.

``handle_rank`` is also what the ASGI hot path (``serving.hotpath``) calls for ``/v1/rank``.
"""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from serving import scoring
from serving.bodies import body_schema, json_response, read_json_body
from serving.deps import Service, ServiceDep
from serving.errors import ERROR_RESPONSES
from serving.schemas import (
    MatchRequest,
    MatchResponse,
    RankRequest,
    RankResponse,
    decode_match,
    decode_rank,
)

logger = logging.getLogger(__name__)

router = APIRouter(tags=["scoring"])


async def handle_rank(request: Request, service: Service) -> Response:
    """``/v1/rank``: the city's model ranks the candidates; without a servable model, the
    nearest-ETA fallback when enabled, else the model error."""
    started = time.perf_counter()
    settings = service.settings
    job = scoring.rank_job(
        decode_rank(await read_json_body(request, settings.max_body_bytes)), settings
    )
    city = job.city.id
    try:
        model = await service.model_for(city)
    except scoring.FALLBACK_ERRORS as exc:
        if not settings.fallback_nearest_eta:
            raise
        body = scoring.rank_nearest_eta(job)
        service.metrics.fallbacks.labels(city).inc()
        logger.warning("fallback ranking for %s: %s", city, exc)
        log_extra: dict[str, object] = {"city": city, "fallback": True}
    else:
        body = scoring.rank(job, model)
        log_extra = {"city": city, "model_version": model.version}
    service.metrics.latency.labels("rank", city).observe(time.perf_counter() - started)
    request.scope["state"]["log_extra"] = log_extra
    return json_response(body)


async def handle_match(request: Request, service: Service) -> Response:
    """``/v1/match``: batch assignment over the city's model's scores."""
    started = time.perf_counter()
    settings = service.settings
    job = scoring.match_job(
        decode_match(await read_json_body(request, settings.max_body_bytes)), settings
    )
    model = await service.model_for(job.city.id)
    body = scoring.match(job, model)
    service.metrics.latency.labels("match", job.city.id).observe(time.perf_counter() - started)
    request.scope["state"]["log_extra"] = {"city": job.city.id, "model_version": model.version}
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
    "/v1/match",
    response_model=MatchResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=body_schema(MatchRequest),
)
async def match(request: Request, service: ServiceDep) -> Response:
    """Assign drivers to several open bookings of one city, maximising the total predicted
    acceptance, each driver at most once (Hungarian algorithm over the model's scores)."""
    return await handle_match(request, service)
