"""The scoring service: ``create_app(settings)`` wires the FastAPI app.

The pieces: ``deps`` (the service state and the token check), ``routes`` (one router per
resource: ops, models, scoring), ``scoring`` (the pure steps: check, rank, fall back, match),
``hotpath`` (the ASGI shortcut to ``/v1/rank``), ``errors`` (the one table from error families
to HTTP answers). The lifespan opens the model store, preloads the hot cities and starts the
registry poller (woken early by a registry webhook delivery, ``routes/registry``).

The request path of ``POST /v1/rank``: read the body (JSON only, size-limited), decode it once
into the typed request (msgspec, ``schemas.decode_rank``), check what the schema cannot
(configured limits, duplicate drivers, coordinates inside the city), take the city's model
reference (``/v1/cities/{city}/rank`` and the ``X-Matchmaking-City`` header must name the
body's city; a city another shard owns is a 421), build the feature matrix with the shared
feature code, predict single-threaded, write JSON with msgspec.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi

from serving import errors
from serving.decisions import LogWriter
from serving.deps import Service, require_token
from serving.hotpath import HotPath
from serving.logs import RequestContextMiddleware
from serving.metrics import Metrics
from serving.registry_watch import ModelStore, freeze_heap
from serving.routes import models, ops, outcomes, registry, scoring
from serving.schemas import request_schemas
from serving.settings import ServeSettings

logger = logging.getLogger(__name__)

__all__ = ["HotPath", "create_app"]

# Environment variables MLflow's REST client reads for every registry call.
_MLFLOW_HTTP_ENV = (
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
)


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """The scoring service app; ``settings`` default to the environment."""
    settings = settings or ServeSettings()
    service = Service(settings, Metrics())
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
    protected = [Depends(require_token)] if service.check_token.enabled else []
    app.include_router(ops.router)
    app.include_router(models.router, dependencies=protected)
    app.include_router(scoring.router, dependencies=protected)
    app.include_router(outcomes.router, dependencies=protected)
    app.include_router(registry.router)  # authenticated by the webhook's HMAC signature
    app.openapi = lambda: openapi_schema(app, settings)  # type: ignore[method-assign]
    # Innermost first: the hot path runs inside the request-id/access-log middleware.
    app.add_middleware(
        HotPath, route=scoring.rank_route, handler=scoring.handle_rank, service=service
    )
    app.add_middleware(
        RequestContextMiddleware,
        access_log=settings.access_log,
        sample=settings.access_log_sample,
        slow_ms=settings.slow_request_ms,
        on_response=lambda path, status: service.metrics.requests.labels(path, str(status)).inc(),
    )
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the model store, preload the hot cities, poll the registry until shutdown."""
    service: Service = app.state.service
    settings = service.settings
    old_env = _apply_registry_limits(settings)
    store = ModelStore(settings, service.metrics)
    logger.info(
        "scoring service: registry %s, hot cities %s, max %d models, poll every %gs%s%s",
        store.uri,
        ",".join(settings.hot_cities) or "-",
        settings.max_models,
        settings.poll_interval_s,
        f", pool {settings.shard!r}" if settings.shard else "",
        ", webhook on" if settings.webhook_secret else "",
    )
    service.poll_now = asyncio.Event()
    service.log = _open_log(service)
    try:
        gc.collect()  # once, before the first freeze: what start-up left as garbage goes now
        await anyio.to_thread.run_sync(store.preload)
        freeze_heap()
        service.store = store
        poller = asyncio.create_task(
            _poll_forever(store, settings.poll_interval_s, service.poll_now)
        )
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            service.store = None
    finally:
        if service.log is not None:
            await anyio.to_thread.run_sync(service.log.close)  # the last flush
            service.log = None
        await anyio.to_thread.run_sync(store.close)
        _restore_env(old_env)


def _open_log(service: Service) -> LogWriter | None:
    """The decision/outcome log writer, started; None when no lake is configured."""
    settings = service.settings
    root = settings.resolved_lake()
    if root is None:
        logger.info("decision log off (no lake configured, or MATCHMAKING_SERVE_DECISION_LOG off)")
        return None
    writer = LogWriter(
        root, service.metrics, settings.decision_queue_size, settings.decision_flush_seconds
    )
    recent = service.recent_outcomes
    writer.on_outcomes_lost = lambda rows: recent.forget(
        [(r["booking_id"], r["driver_id"], r["position"], r["stage"]) for r in rows]
    )
    writer.start()
    logger.info(
        "decision log to %s/serving, flushed every %gs", root, settings.decision_flush_seconds
    )
    return writer


def openapi_schema(app: FastAPI, settings: ServeSettings) -> dict[str, Any]:
    """The OpenAPI document: the routes, the msgspec request schemas, the configured limits."""
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
    components["OutcomesRequest"]["properties"]["outcomes"]["maxItems"] = settings.max_outcomes
    app.openapi_schema = schema
    return schema


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


async def _poll_forever(store: ModelStore, interval_s: float, now: asyncio.Event) -> None:
    """Poll every ``interval_s``, or at once when ``now`` is set (a webhook delivery)."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(now.wait(), interval_s)
        now.clear()
        try:
            await anyio.to_thread.run_sync(store.poll_once)
        except Exception:  # the poller must outlive any single failure
            logger.exception("registry poll failed")
