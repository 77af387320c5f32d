"""The scoring service: ``create_app(settings)`` builds the FastAPI app.

The lifespan opens the model store, preloads the hot cities and starts the registry poller.
The request path of ``POST /v1/rank``: read the body (JSON only, size-limited), decode it once
into the typed request (msgspec, ``schemas.decode_rank``), check what the schema cannot
(configured limits, duplicate drivers, coordinates inside the city), take the city's model
reference, build the feature matrix with the shared feature code, predict single-threaded,
write JSON with msgspec.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec
import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from matchmaking.errors import MatchmakingError, ModelNotFoundError, TrackingError
from matchmaking.features.core import FloatArray, estimate_eta_seconds
from matchmaking.features.geo import haversine_km
from matchmaking.features.online import OnlineBooking, OnlineCandidates
from matchmaking.markets import Market as City
from matchmaking.markets import get_market as get_city
from matchmaking.schema import FEATURE_NAMES
from serving import errors
from serving.errors import ServiceError
from serving.logs import RequestContextMiddleware
from serving.metrics import Metrics
from serving.models import LoadedModel
from serving.registry_watch import ModelStore
from serving.schemas import (
    Booking,
    Candidate,
    ErrorResponse,
    MatchDriver,
    MatchRequest,
    MatchResponse,
    RankRequest,
    RankResponse,
    decode_match,
    decode_rank,
    request_schemas,
)
from serving.settings import ServeSettings

logger = logging.getLogger(__name__)

ETA_COLUMN = FEATURE_NAMES.index("eta_min")
JSON_MEDIA_TYPE = "application/json"
_json = msgspec.json.Encoder()
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (401, "Missing or wrong bearer token (when auth is enabled)."),
        (404, "Unknown city, or the city has no Production model."),
        (413, "Body larger than the configured limit."),
        (415, "Content-Type is not application/json."),
        (422, "Invalid body: field-level reasons in error.details."),
        (503, "The registry is unreachable and the city's model is not loaded."),
    )
}
# Environment variables MLflow's REST client reads for every registry call.
_MLFLOW_HTTP_ENV = (
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
)


def _json_response(body: dict[str, Any], status: int = 200) -> Response:
    return Response(_json.encode(body), status_code=status, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything larger than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServiceError(413, "body_too_large", f"body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServiceError(413, "body_too_large", f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def require_json(content_type: str | None) -> None:
    """Refuse (415) a body not declared as JSON.

    Accepted: ``application/json`` in any letter case, with or without parameters; a
    ``charset`` parameter must say UTF-8 (RFC 8259: JSON is UTF-8). Refused: everything else,
    a missing Content-Type, and ``+json`` suffix types (``application/merge-patch+json``,
    ``application/problem+json``...), whose meaning is not this API's.
    """
    if content_type == JSON_MEDIA_TYPE:  # the common case, without parsing
        return
    media, *params = (content_type or "").split(";")
    ok = media.strip().lower() == JSON_MEDIA_TYPE
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            ok = ok and value.strip().strip('"').lower() in ("utf-8", "utf8")
    if not ok:
        given = f"Content-Type {content_type[:100]!r}" if content_type else "no Content-Type"
        raise ServiceError(
            415,
            "unsupported_media_type",
            f"{given} is not accepted; send the body as JSON with 'Content-Type: application/json'",
        )


async def read_json_body(request: Request, limit: int) -> bytes:
    """The body of a JSON request: 415 unless declared as JSON, 413 above ``limit`` bytes."""
    require_json(request.headers.get("content-type"))
    return await read_body(request, limit)


def _detail(loc: Sequence[str | int], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": list(loc), "msg": msg, "type": kind}


def check_positions(
    city: City,
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
        raise ServiceError(422, "invalid_request", f"{len(details)} invalid field(s)", details)


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
    driver_ids: Sequence[str], scores: FloatArray, eta_seconds: FloatArray
) -> list[dict[str, Any]]:
    """Candidates best first (ties: the request's order), with 1-based ranks."""
    order = np.argsort(-scores, kind="stable")  # stable: ties keep the request's order
    return [
        {"driver_id": driver_ids[i], "rank": r, "score": s, "eta_seconds": e}
        for r, (i, s, e) in enumerate(
            zip(order.tolist(), scores[order].tolist(), eta_seconds[order].tolist(), strict=True),
            start=1,
        )
    ]


def _sigmoid(x: FloatArray) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float64)


def _body_schema(model: type) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


class HotPath:
    """Pure ASGI shortcut to the hottest route (``POST /v1/rank``).

    Same handler, same auth check, same error mapping as through FastAPI, minus its routing and
    dependency machinery (about a tenth of a request's cost). The FastAPI route stays
    registered: it documents the endpoint in the OpenAPI schema.
    """

    def __init__(
        self,
        app: Any,
        path: str,
        handler: Callable[[Request], Awaitable[Response]],
        check: Callable[[str | None], None],
    ) -> None:
        self.app = app
        self.path = path
        self.handler = handler
        self.check = check

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["route"] = self.path
        request = Request(scope, receive)
        try:
            self.check(request.headers.get("authorization"))
            response = await self.handler(request)
        except Exception as exc:
            mapped = errors.to_response(request, exc)
            if mapped is None:
                raise
            response = mapped
        await response(scope, receive, send)


class Service:
    """State shared by the endpoints of one app."""

    def __init__(self, settings: ServeSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store: ModelStore | None = None
        self.started_at = time.time()

    def require_store(self) -> ModelStore:
        if self.store is None:
            raise ServiceError(503, "starting", "the service is starting; retry shortly")
        return self.store

    async def model_for(self, city: str) -> LoadedModel:
        """The city's model: from memory, else loaded from the registry off the event loop."""
        store = self.require_store()
        model = store.get(city)
        if model is None:
            model = await anyio.to_thread.run_sync(store.load, city)
        return model


def _apply_registry_limits(settings: ServeSettings) -> dict[str, str | None]:
    """Bound every registry call (MLflow reads these per request); returns the old values."""
    old = {k: os.environ.get(k) for k in _MLFLOW_HTTP_ENV}
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.ceil(settings.registry_timeout_s)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(settings.registry_retries)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    return old


def _restore_env(old: dict[str, str | None]) -> None:
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


async def _poll_forever(store: ModelStore, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await anyio.to_thread.run_sync(store.poll_once)
        except Exception:  # the poller must outlive any single failure
            logger.exception("registry poll failed")


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """The scoring service app; ``settings`` default to the environment."""
    settings = settings or ServeSettings()
    metrics = Metrics()
    service = Service(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        old_env = _apply_registry_limits(settings)
        store = ModelStore(settings, metrics)
        logger.info(
            "scoring service: registry %s, hot cities %s, max %d models, poll every %gs",
            store.uri,
            ",".join(settings.hot_cities) or "-",
            settings.max_models,
            settings.poll_interval_s,
        )
        await anyio.to_thread.run_sync(store.preload)
        service.store = store
        poller = asyncio.create_task(_poll_forever(store, settings.poll_interval_s))
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            service.store = None
            _restore_env(old_env)

    app = FastAPI(
        title="matchmaking scoring service",
        version="1",
        description=(
            "Ranks candidate drivers for a booking with the city's Production model, and "
            "assigns drivers to several bookings at once. See docs/serving.md."
        ),
        lifespan=lifespan,
    )
    app.state.service = service
    errors.install(app)

    bearer = HTTPBearer(auto_error=False, description="Set when MATCHMAKING_SERVE_AUTH_TOKEN is.")
    token = settings.auth_token.get_secret_value().encode() if settings.auth_token else None

    def check_token(authorization: str | None) -> None:
        """401 unless ``Authorization: Bearer <token>`` matches (when auth is enabled)."""
        if token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token):
            raise ServiceError(
                401,
                "unauthorized",
                "missing or wrong bearer token; send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def require_token(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        check_token(request.headers.get("authorization"))

    protected = [Depends(require_token)] if token else []

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "Hot cities not loaded."}})
    async def readyz() -> Response:
        """Readiness: the hot cities are loaded. A registry outage degrades, never unreadies:
        the loaded models keep serving, so the pod must stay in rotation."""
        store = service.store
        if store is None:
            return _json_response({"status": "starting"}, 503)
        missing = store.missing_hot_cities()
        st = store.status
        body = {
            "status": "not_ready" if missing else ("degraded" if st.reachable is False else "ok"),
            "missing_hot_cities": missing,
            "models_loaded": len(store.loaded()),
            "registry": {
                "uri": _redact(store.uri),
                "reachable": st.reachable,
                "last_success_at": _iso(st.last_success_at),
                "last_error": st.last_error,
                "last_error_at": _iso(st.last_error_at),
            },
        }
        return _json_response(body, 503 if missing else 200)

    @app.get("/metrics", tags=["ops"])
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", tags=["models"], dependencies=protected, responses=_ERRORS)
    async def list_models() -> Response:
        """What is loaded, which version, found how, since when."""
        store = service.require_store()
        return _json_response(
            {
                "models": [
                    {
                        "city": m.city.id,
                        "model": m.name,
                        "version": m.version,
                        "source": m.ref.source,
                        "score_kind": m.ref.score_kind,
                        "engine": m.engine,
                        "run_id": m.ref.run_id,
                        "loaded_at": _iso(m.loaded_at),
                        "load_seconds": round(m.load_seconds, 3),
                        "drivers_in_table": len(m.drivers),
                    }
                    for m in reversed(store.loaded())
                ],
                "max_models": settings.max_models,
            }
        )

    @app.post(
        "/v1/rank",
        tags=["scoring"],
        response_model=RankResponse,
        responses=_ERRORS,
        dependencies=protected,
        openapi_extra=_body_schema(RankRequest),
    )
    async def rank(request: Request) -> Response:
        """Rank a booking's candidate drivers, best first."""
        started = time.perf_counter()
        req = decode_rank(await read_json_body(request, settings.max_body_bytes))
        b = req.booking
        cands = req.candidates
        city = get_city(b.city)
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
        try:
            model = await service.model_for(city.id)
        except (ModelNotFoundError, TrackingError) as exc:
            if not settings.fallback_nearest_eta:
                raise
            return _fallback(request, city, b, rows, exc, started)
        matrix = model.features([online_booking(b)], rows)
        scores = model.predict(matrix)
        body = {
            "booking_id": b.booking_id,
            "city": city.id,
            "model": model.name,
            "version": model.version,
            "score_kind": model.ref.score_kind,
            "fallback": False,
            "candidates": ranking(rows.driver_id, scores, matrix[:, ETA_COLUMN] * 60.0),
        }
        metrics.latency.labels("rank", city.id).observe(time.perf_counter() - started)
        request.scope["state"]["log_extra"] = {"city": city.id, "model_version": model.version}
        return _json_response(body)

    def _fallback(
        request: Request,
        city: City,
        b: Booking,
        rows: OnlineCandidates,
        exc: MatchmakingError,
        started: float,
    ) -> Response:
        """Nearest ETA first (given, else estimated at the hour's speed); flagged."""
        from matchmaking.features.online import local_clock

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
        metrics.fallbacks.labels(city.id).inc()
        metrics.latency.labels("rank", city.id).observe(time.perf_counter() - started)
        logger.warning("fallback ranking for %s: %s", city.id, exc)
        request.scope["state"]["log_extra"] = {"city": city.id, "fallback": True}
        return _json_response(
            {
                "booking_id": b.booking_id,
                "city": city.id,
                "model": None,
                "version": None,
                "score_kind": "nearest_eta",
                "fallback": True,
                "candidates": ranked,
            }
        )

    @app.post(
        "/v1/match",
        tags=["scoring"],
        response_model=MatchResponse,
        responses=_ERRORS,
        dependencies=protected,
        openapi_extra=_body_schema(MatchRequest),
    )
    async def match(request: Request) -> Response:
        """Assign drivers to several open bookings of one city, maximising the total predicted
        acceptance, each driver at most once (Hungarian algorithm over the model's scores)."""
        from matchmaking.evaluation.matching import UNASSIGNED, batch_assignment

        started = time.perf_counter()
        req = decode_match(await read_json_body(request, settings.max_body_bytes))
        city = get_city(req.city)
        details = check_count(len(req.bookings), settings.max_bookings, "bookings")
        details += check_count(len(req.drivers), settings.max_candidates, "drivers")
        details += check_unique([x.booking_id for x in req.bookings], "bookings", "booking_id")
        details += check_unique([d.driver_id for d in req.drivers], "drivers", "driver_id")
        bks, drs = req.bookings, req.drivers
        n_b, n_d = len(bks), len(drs)
        one = online_candidates(drs)

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
        model = await service.model_for(city.id)
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
        matrix = model.features([online_booking(x) for x in req.bookings], rows)
        scores = model.predict(matrix).reshape(n_b, n_d)
        # Rank scores are not probabilities: the logistic maps them onto (0, 1) to add them up.
        value = scores if model.ref.score_kind == "probability" else _sigmoid(scores)
        assigned = batch_assignment(value)
        out: list[dict[str, Any]] = []
        total = 0.0
        for i, j in enumerate(assigned.tolist()):
            if j == UNASSIGNED:
                out.append(
                    {"booking_id": req.bookings[i].booking_id, "driver_id": None, "score": None}
                )
            else:
                total += float(value[i, j])
                out.append(
                    {
                        "booking_id": req.bookings[i].booking_id,
                        "driver_id": req.drivers[j].driver_id,
                        "score": float(scores[i, j]),
                    }
                )
        metrics.latency.labels("match", city.id).observe(time.perf_counter() - started)
        request.scope["state"]["log_extra"] = {"city": city.id, "model_version": model.version}
        return _json_response(
            {
                "city": city.id,
                "model": model.name,
                "version": model.version,
                "score_kind": model.ref.score_kind,
                "total_score": total,
                "assignments": out,
            }
        )

    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(request_schemas("#/components/schemas/{name}"))
        # The configured limits, so clients (and schemathesis) see the real bounds.
        components["RankRequest"]["properties"]["candidates"]["maxItems"] = settings.max_candidates
        components["MatchRequest"]["properties"]["bookings"]["maxItems"] = settings.max_bookings
        components["MatchRequest"]["properties"]["drivers"]["maxItems"] = settings.max_candidates
        app.openapi_schema = schema
        return schema

    app.openapi = custom_openapi  # type: ignore[method-assign]
    # Innermost first: the hot path runs inside the request-id/access-log middleware.
    app.add_middleware(HotPath, path="/v1/rank", handler=rank, check=check_token)
    app.add_middleware(
        RequestContextMiddleware,
        access_log=settings.access_log,
        sample=settings.access_log_sample,
        slow_ms=settings.slow_request_ms,
        on_response=lambda path, status: metrics.requests.labels(path, str(status)).inc(),
    )

    return app


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _redact(uri: str) -> str:
    """A URI without credentials (user:password@)."""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri
