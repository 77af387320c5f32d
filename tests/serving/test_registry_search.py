"""The poll's registry search read straight from the tracking server's REST answer (msgspec)
gives what MLflow's client gives, page by page, with one registry call per page."""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from support.registered import Registered

from serving import registry_search
from serving.registry_search import ModelEntry, StagedVersion, search_pages


def _entries(pages: list[list[ModelEntry]]) -> list[ModelEntry]:
    return sorted((e for page in pages for e in page), key=lambda e: e.name)


def test_rest_pages_equal_the_clients(tracking_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reg = Registered(uri=tracking_server.uri, prefix=f"rs{uuid.uuid4().hex[:8]}", tmp=tmp_path)
    client = MlflowClient(tracking_uri=reg.uri, registry_uri=reg.uri)
    cities = ("jakarta", "surabaya", "medan")
    for seed, city in enumerate(cities):
        reg.register(city, seed, alias="production" if city != "medan" else None)
    reg.register("jakarta", 9, alias="challenger")
    client.set_registered_model_tag(reg.name("jakarta"), "challenger.share", "0.2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated, still honoured
        client.transition_model_version_stage(reg.name("medan"), "1", "Production")
    client.set_model_version_tag(reg.name("medan"), "1", "score_kind", "probability")

    assert registry_search._rest_store(client) is not None  # a tracking server: the fast path
    head = f"name LIKE '{reg.prefix}-%'"
    calls: list[int] = []
    rest = list(search_pages(client, head, 2, on_call=lambda: calls.append(1)))
    assert len(rest) == 2 and len(calls) == 2  # 3 models at 2 a page: one call per page
    through_client = list(registry_search._client_pages(client, head, 2, lambda: None))
    assert _entries(rest) == _entries(through_client)

    by_name = {e.name: e for e in _entries(rest)}
    jakarta, medan = by_name[reg.name("jakarta")], by_name[reg.name("medan")]
    assert jakarta.aliases == {"production": "1", "challenger": "2"}
    assert jakarta.tags["challenger.share"] == "0.2" and jakarta.staged is None
    assert medan.aliases == {}
    assert medan.staged is not None and medan.staged.version == "1"
    assert medan.staged.tags["score_kind"] == "probability" and medan.staged.run_id
    assert isinstance(medan.staged, StagedVersion)


def test_a_database_registry_goes_through_the_client(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("db-jakarta", tags={"city": "jakarta"})
    assert registry_search._rest_store(client) is None
    pages = list(search_pages(client, "name LIKE 'db-%'", 10))
    assert pages == [[ModelEntry("db-jakarta", {}, {"city": "jakarta"}, None)]]


def test_an_unreachable_server_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = MlflowClient(tracking_uri="http://127.0.0.1:9", registry_uri="http://127.0.0.1:9")
    with pytest.raises((MlflowException, OSError)):
        list(search_pages(client, "name LIKE 'x-%'", 10))
