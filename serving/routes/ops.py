"""Liveness, readiness and Prometheus metrics (never behind the token)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.bodies import iso, json_response
from serving.deps import ServiceDep

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Hot cities not loaded."}})
async def readyz(service: ServiceDep) -> Response:
    """Readiness: the hot cities are loaded. A registry outage degrades, never unreadies:
    the loaded models keep serving, so the pod must stay in rotation."""
    store = service.store
    if store is None:
        return json_response({"status": "starting"}, 503)
    missing = store.missing_hot_cities()
    st = store.status
    body = {
        "status": "not_ready" if missing else ("degraded" if st.reachable is False else "ok"),
        "missing_hot_cities": missing,
        "models_loaded": len(store.loaded()),
        "registry": {
            "uri": redact(store.uri),
            "reachable": st.reachable,
            "last_success_at": iso(st.last_success_at),
            "last_error": st.last_error,
            "last_error_at": iso(st.last_error_at),
        },
    }
    return json_response(body, 503 if missing else 200)


@router.get("/metrics")
async def prometheus_metrics(service: ServiceDep) -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def redact(uri: str) -> str:
    """A URI without credentials (user:password@)."""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri
