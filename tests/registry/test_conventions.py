"""Registry conventions: strict model-name parsing, the one Production resolver, and the
artifact paths training writes being the ones serving reads."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from support.registry_world import Trained, register_copy, settings_for
from support.tracking_server import TrackingServer

from matchmaking.errors import ModelNotFoundError, TrackingError
from matchmaking.markets import default_catalogue
from matchmaking.registry.conventions import (
    CITY_TAG,
    DRIVER_TABLE_ARTIFACT,
    FEATURES_URI_TAG,
    SCORE_KIND_TAG,
    SCORE_PROBABILITY,
    city_of_model,
    model_name,
)
from matchmaking.registry.fleet import registered_cities
from matchmaking.registry.gate import load_thresholds
from matchmaking.registry.production import current_production, resolve_production
from matchmaking.registry.promote import promote

CITIES = default_catalogue().ids()


def test_every_catalogue_city_round_trips_through_its_model_name() -> None:
    for city in CITIES:
        assert city_of_model(model_name("matchmaking", city), "matchmaking", CITIES) == city
    assert "ho-chi-minh-city" in CITIES  # city ids hold hyphens: a name cannot just be split


@pytest.mark.parametrize(
    "name",
    [
        "matchmaking-cancellation-jakarta",  # a second model type under the same prefix
        "matchmaking-jakarta-cancellation",
        "matchmaking-v2-jakarta",  # another prefix that begins with this one
        "matchmakingv2-jakarta",
        "other-jakarta",
        "matchmaking-",
        "matchmaking",
    ],
)
def test_a_name_with_more_parts_is_no_city_s_model(name: str) -> None:
    assert city_of_model(name, "matchmaking", CITIES) is None


def test_fleet_mode_never_reads_a_longer_name_as_a_city(
    trained: Trained, tracking_server: TrackingServer
) -> None:
    """Models named ``<prefix>-cancellation-jakarta`` and ``<prefix>-v2-bangkok`` are left out
    of ``--all-cities``; parsing by stripping the prefix made them cities
    ``cancellation-jakarta`` and ``v2-bangkok``, which the fleet then tried to promote."""
    settings = settings_for(trained)
    client = MlflowClient(tracking_uri=tracking_server.uri, registry_uri=tracking_server.uri)
    register_copy(settings, "jakarta", trained.good)
    register_copy(settings, "cancellation-jakarta", trained.good)
    for rest in ("v2-bangkok", "jakarta-cancellation"):
        client.create_registered_model(f"{settings.model_name_prefix}-{rest}")
    client.create_registered_model(f"{settings.model_name_prefix}x-bangkok")

    assert registered_cities(client, settings) == ["jakarta"]
    relaxed = load_thresholds().model_copy(update={"max_latency_p99_ms": 10_000.0})
    outcomes = promote(settings, None, dry_run=True, thresholds=relaxed)
    assert [(o.city, o.status) for o in outcomes] == [("jakarta", "would promote")]


def test_one_resolver_tells_no_production_from_a_failing_registry(
    tracking_server: TrackingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No model, or a model with no Production version, is "none" (``ModelNotFoundError``,
    ``current_production`` None); an unreachable registry is ``TrackingError`` for both, never
    "none" (which the gate would read as "no Production: floors only")."""
    client = MlflowClient(tracking_uri=tracking_server.uri, registry_uri=tracking_server.uri)
    name = f"conv-{uuid.uuid4().hex[:10]}-jakarta"
    with pytest.raises(ModelNotFoundError, match="no registered model"):
        resolve_production(client, name)
    assert current_production(client, name) is None
    client.create_registered_model(name)
    with pytest.raises(ModelNotFoundError, match="promote a version first"):
        resolve_production(client, name)
    assert current_production(client, name) is None

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    down = MlflowClient(tracking_uri=dead, registry_uri=dead)
    with pytest.raises(TrackingError, match=name):
        resolve_production(down, name)
    with pytest.raises(TrackingError, match=name):
        current_production(down, name)


def test_a_trained_version_carries_what_its_readers_look_for(
    trained: Trained, tmp_path: Path
) -> None:
    """Training writes the tags and the driver table where promotion and serving read them."""
    client = MlflowClient(tracking_uri=trained.server_uri, registry_uri=trained.server_uri)
    result = trained.good
    mv = client.get_model_version(result.model_name, result.version)
    assert mv.tags[CITY_TAG] == "jakarta"
    assert mv.tags[SCORE_KIND_TAG] == SCORE_PROBABILITY
    assert mv.tags[FEATURES_URI_TAG].startswith("file://")
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=client.get_model_version_download_uri(result.model_name, result.version),
            dst_path=str(tmp_path),
            tracking_uri=trained.server_uri,
            registry_uri=trained.server_uri,
        )
    )
    assert (local / DRIVER_TABLE_ARTIFACT).is_file(), sorted(
        str(p.relative_to(local)) for p in local.rglob("*")
    )
