"""``GET /v1/models``: what is loaded, which version, found how, since when."""

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
    (``lleaves``: the compiled forest; ``lightgbm``: the booster, until it is swapped in)."""
    store = service.require_store()
    return json_response(
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
                    "loaded_at": iso(m.loaded_at),
                    "load_seconds": round(m.load_seconds, 3),
                    "compile_seconds": (
                        None if m.compile_seconds is None else round(m.compile_seconds, 3)
                    ),
                    "drivers_in_table": len(m.drivers),
                }
                for m in reversed(store.loaded())
            ],
            "max_models": service.settings.max_models,
            "pool": service.settings.shard,
            "compiles_pending": store.compiler.pending(),
        }
    )
