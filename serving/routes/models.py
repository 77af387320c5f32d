"""``GET /v1/models``: what is loaded, which version, found how, since when, serving which
cities."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from serving.bodies import iso, json_response
from serving.deps import ServiceDep
from serving.errors import ERROR_RESPONSES

router = APIRouter(tags=["models"])


@router.get("/v1/models", responses=ERROR_RESPONSES)
async def list_models(service: ServiceDep) -> Response:
    """What is loaded, which version, found how, since when, scored by which engine
    (``lleaves``: the compiled forest; ``lightgbm``: the booster, until it is swapped in), and
    which model serves each city it has seen (``routes``: its own, or its country's)."""
    store = service.require_store()
    routes = store.routes()
    return json_response(
        {
            "models": [
                {
                    "city": m.city.id if m.city is not None else None,
                    "scope": m.scope,
                    "country": m.country,
                    "cities": sorted(c for c, r in routes.items() if r.name == m.name),
                    "model": m.name,
                    "version": m.version,
                    "source": m.ref.source,
                    "score_kind": m.ref.score_kind,
                    "engine": m.engine,
                    "run_id": m.ref.run_id,
                    "loaded_at": iso(m.loaded_at),
                    "load_seconds": round(m.load_seconds, 3),
                    "compile_seconds": (
                        None if m.compile_seconds is None else round(m.compile_seconds, 3)
                    ),
                    "drivers_in_table": len(m.drivers),
                }
                for m in reversed(store.loaded())
            ],
            "routes": {
                city: {"model": r.name, "model_scope": r.scope, "reason": r.reason}
                for city, r in sorted(routes.items())
            },
            "max_models": service.settings.max_models,
            "pool": service.settings.shard,
            "compiles_pending": store.compiler.pending(),
        }
    )
