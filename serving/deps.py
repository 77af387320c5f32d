"""What the routes are given: the service state (``get_service``) and the bearer-token check.

One ``Service`` per app (``app.state.service``): the settings, the metrics, the model store the
lifespan opens, and the token check. Routes take it as a dependency (``ServiceDep``); the ASGI
hot path of ``/v1/rank`` (``serving.hotpath``) is handed the same object.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Annotated

import anyio
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serving.decisions import LogWriter, RecentKeys
from serving.errors import ServiceError
from serving.metrics import Metrics
from serving.models import LoadedModel
from serving.registry_watch import ModelStore
from serving.settings import ServeSettings
from serving.shards import ShardMap


class TokenCheck:
    """``Authorization: Bearer <token>`` against the configured token (none: no check)."""

    def __init__(self, settings: ServeSettings) -> None:
        token = settings.auth_token
        self.token = token.get_secret_value().encode() if token else None

    @property
    def enabled(self) -> bool:
        return self.token is not None

    def __call__(self, authorization: str | None) -> None:
        """401 unless the header carries the token (when auth is enabled)."""
        if self.token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            given.strip().encode(), self.token
        ):
            raise ServiceError(
                401,
                "unauthorized",
                "missing or wrong bearer token; send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )


class Service:
    """State shared by the endpoints of one app."""

    def __init__(self, settings: ServeSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.check_token = TokenCheck(settings)
        self.shards = ShardMap.from_settings(settings)
        self.store: ModelStore | None = None
        self.started_at = time.time()
        # Set (on the event loop) to start a registry poll now: a webhook delivery.
        self.poll_now: asyncio.Event | None = None
        # The decision/outcome log writer (the lifespan opens it when a lake is configured).
        self.log: LogWriter | None = None
        self.recent_outcomes = RecentKeys(settings.outcome_dedup_keys)

    def require_store(self) -> ModelStore:
        if self.store is None:
            raise ServiceError(503, "starting", "the service is starting; retry shortly")
        return self.store

    async def model_for(self, city: str) -> LoadedModel:
        """The model serving the city (its own, or its country's pooled one): from memory,
        else loaded from the registry off the event loop (the booster only: compilation
        follows in the background).

        Raises:
            ServiceError: 421 when another pool owns the city (``serving.shards``).
        """
        self.shards.check(city)
        store = self.require_store()
        model = store.get(city)
        if model is None:
            model = await anyio.to_thread.run_sync(store.load, city)
        return model


def get_service(request: Request) -> Service:
    """The app's ``Service``."""
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]

bearer = HTTPBearer(auto_error=False, description="Set when MATCHMAKING_SERVE_AUTH_TOKEN is.")


async def require_token(
    request: Request,
    service: ServiceDep,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
) -> None:
    """Route dependency: 401 unless the bearer token matches (documents the scheme in OpenAPI)."""
    service.check_token(request.headers.get("authorization"))
