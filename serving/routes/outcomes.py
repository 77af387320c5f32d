"""``POST /v1/outcomes``: what dispatch learnt of its offers, recorded in the serving log.

Each outcome is keyed by (booking, driver, position, stage) (``schema.OUTCOME_KEY``): a repeat
with the same outcome answers 200 and is not stored again (this process remembers its recent
keys; ``lake.serving_log.read_log`` deduplicates across replicas and restarts); a repeat with
a different outcome is a 409 naming the outcome first reported, and nothing of that batch is
stored. A batch is all-or-nothing: a field error anywhere refuses it whole (422).
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from matchmaking.errors import UnknownCityError
from matchmaking.markets import get_market
from serving.bodies import body_schema, json_response, read_json_body
from serving.deps import Service, ServiceDep
from serving.errors import ERROR_RESPONSES, ServiceError
from serving.schemas import ErrorResponse, OutcomesRequest, OutcomesResponse, decode_outcomes
from serving.scoring import check_count, raise_if

router = APIRouter(tags=["outcomes"])

Key = tuple[str, str, int, str]

RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    409: {
        "model": ErrorResponse,
        "description": "An outcome already reported differently for the same booking, driver, "
        "position and stage (nothing of the batch stored).",
    },
    503: {
        "model": ErrorResponse,
        "description": "No lake configured for the log, or its queue is full (retry: repeats "
        "are stored once).",
    },
}


async def handle_outcomes(request: Request, service: Service) -> Response:
    settings = service.settings
    req = decode_outcomes(await read_json_body(request, settings.max_body_bytes))
    items = req.outcomes
    details = check_count(len(items), settings.max_outcomes, "outcomes")
    known: dict[str, bool] = {}
    for i, o in enumerate(items):
        if o.city not in known:
            try:
                get_market(o.city)
                known[o.city] = True
            except UnknownCityError:
                known[o.city] = False
        if not known[o.city]:
            details.append(
                {
                    "loc": ["outcomes", i, "city"],
                    "msg": f"unknown city {o.city!r} (see `matchmaking world cities`)",
                    "type": "unknown_city",
                }
            )
    raise_if(details)
    log = service.log
    if log is None:
        raise ServiceError(
            503,
            "outcome_log_off",
            "this service logs no outcomes: no lake is configured (set "
            "MATCHMAKING_SERVE_LAKE_URI or MATCHMAKING_LAKE_URI), or "
            "MATCHMAKING_SERVE_DECISION_LOG is false",
        )
    recent = service.recent_outcomes
    batch: dict[Key, str] = {}
    rows: list[dict[str, Any]] = []
    duplicates = 0
    conflicts: list[dict[str, Any]] = []
    for i, o in enumerate(items):
        key: Key = (o.booking_id, o.driver_id, o.position, o.stage)
        before = batch.get(key) or recent.get(key)
        if before is None:
            batch[key] = o.outcome
            rows.append(
                {
                    "booking_id": o.booking_id,
                    "driver_id": o.driver_id,
                    "position": o.position,
                    "city": o.city,
                    "stage": o.stage,
                    "outcome": o.outcome,
                    "occurred_at": o.occurred_at.astimezone(UTC),
                    "request_id": o.request_id,
                }
            )
        elif before == o.outcome:
            duplicates += 1
        else:
            conflicts.append(
                {
                    "loc": ["outcomes", i, "outcome"],
                    "msg": f"booking {o.booking_id!r}, driver {o.driver_id!r}, position "
                    f"{o.position}, stage {o.stage!r} was already reported as {before!r}; an "
                    "outcome is reported once and never changed",
                    "type": "conflict",
                }
            )
    if conflicts:
        raise ServiceError(
            409,
            "outcome_conflict",
            f"{len(conflicts)} outcome(s) contradict outcomes already reported; nothing of "
            "this batch was stored",
            conflicts,
        )
    if rows and not log.outcomes(rows):
        raise ServiceError(
            503,
            "log_queue_full",
            "the log writer's queue is full; retry shortly (repeats are stored once)",
            headers={"Retry-After": "1"},
        )
    recent.add(list(batch.items()))
    body = {"received": len(items), "accepted": len(rows), "duplicates": duplicates}
    return json_response(body)


@router.post(
    "/v1/outcomes",
    response_model=OutcomesResponse,
    responses=RESPONSES,
    openapi_extra=body_schema(OutcomesRequest),
)
async def outcomes(request: Request, service: ServiceDep) -> Response:
    """Record what dispatch learnt of its offers (offer responses, trip ends)."""
    return await handle_outcomes(request, service)
