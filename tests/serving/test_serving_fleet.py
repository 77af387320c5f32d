"""The service at fleet scale, against the real tracking server and a real uvicorn:

* a cold city is answered by the plain booster (two files fetched, no compilation on the
  request path), the compiled forest is swapped in later under load with no failed request,
  and both engines score as ``Booster.predict`` to 1e-9;
* one registry search per poll, as many calls with 50 loaded models as with 1 (counted on the
  wire by a proxy in front of the tracking server);
* shards: a pool refuses another pool's city with 421 naming it; a hot set larger than the
  cache is refused at startup; hot models are never evicted, so readiness cannot flap;
* the MLflow webhook push path: a signed delivery starts a poll at once.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import ValidationError
from support.live import SURABAYA, CountingProxy, Load, ServerThread, metric, rank_body, wait_for
from support.model_factory import (
    random_booster,
    random_frame,
    register_copies,
    set_alias,
    write_driver_table,
)
from support.registered import KNOWN_DRIVERS, Registered, expected_scores, serve_settings
from support.tracking_server import TrackingServer

from matchmaking.markets import catalogue
from matchmaking.registry.conventions import SERVING_ARTIFACTS
from serving.app import create_app
from serving.compile import Compiler
from serving.metrics import Metrics
from serving.models import check_rows
from serving.registry_watch import ModelStore
from serving.routes.registry import signature
from serving.settings import ServeSettings

pytestmark = pytest.mark.integration


def engine_metric(c: httpx.Client, reg: Registered, city: str, engine: str) -> float | None:
    # Prometheus writes labels sorted by name.
    return metric(c, "matchmaking_model_engine", city=city, engine=engine, model=reg.name(city))


def models_by_city(c: httpx.Client) -> dict[str, dict[str, object]]:
    return {m["city"]: m for m in c.get("/v1/models").json()["models"]}


# -- 1. no compilation, no needless download on the request path ------------------------------


def test_both_engines_score_as_booster_predict(registered: Registered) -> None:
    """The plain booster and the compiled forest of a loaded version equal Booster.predict."""
    settings = serve_settings(registered, hot_cities=[])
    metrics = Metrics()
    store = ModelStore(settings, metrics)
    published = []
    try:
        plain = store.load("jakarta")
        assert plain.engine == "lightgbm" and plain.compiled is None
        booster = registered.boosters[f"jakarta@{registered.versions['jakarta'][0]}"]
        rows = np.vstack([check_rows(booster.num_feature()), random_frame(500, 9).to_numpy()])
        expected = booster.predict(rows)
        assert np.max(np.abs(plain.predict(rows) - expected)) <= 1e-9
        compiler = Compiler(metrics, workers=1)
        assert compiler.submit(plain, lambda m: published.append(m) or True)
        wait_for(lambda: compiler.pending() == 0, 120, "the compilation")
        compiler.shutdown()
        (compiled,) = published
        assert compiled.engine == "lleaves" and compiled.version == plain.version
        assert np.max(np.abs(compiled.predict(rows) - expected)) <= 1e-9
    finally:
        store.close()


def test_a_cold_load_fetches_only_the_model_file_and_the_driver_table(
    registered: Registered,
) -> None:
    with CountingProxy(registered.uri) as proxy:
        settings = serve_settings(registered, tracking_uri=proxy.uri, hot_cities=[])
        store = ModelStore(settings, Metrics())
        try:
            model = store.load("surabaya")
        finally:
            store.close()
        calls = proxy.take()
    assert len(model.drivers) == len(KNOWN_DRIVERS)
    downloads = [path for method, path in calls if "/mlflow-artifacts/artifacts/" in path]
    fetched = {p.split("?")[0].rsplit("/artifacts/", 1)[-1] for p in downloads}
    assert fetched == {f for f in SERVING_ARTIFACTS}, fetched
    assert not [p for _, p in calls if p.endswith(("conda.yaml", "MLmodel", "input_example.json"))]
    assert len(calls) <= 8, calls  # was 14 with the whole model directory


def test_cold_city_answers_before_compilation_then_swaps_under_load(
    registered: Registered,
) -> None:
    """The first request of a cold city is answered by the booster while the compilation is
    still pending; the compiled forest replaces it under two clients' load, not one failed
    request, and the scores stay Booster.predict's."""
    city = "surabaya"
    body = rank_body(city=city, centre=SURABAYA, n=50, seed=4)
    version = registered.versions[city][0]
    settings = serve_settings(registered, hot_cities=[])
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as c:
        first = c.post("/v1/rank", json=body)
        assert first.status_code == 200, first.text
        cold = models_by_city(c)[city]
        assert cold["engine"] == "lightgbm", "the first answer waited for the compilation"
        assert c.get("/v1/models").json()["compiles_pending"] == 1
        assert engine_metric(c, registered, city, "lightgbm") == 1.0  # fmt: skip
        with Load(server.url, body, clients=2) as load:
            wait_for(lambda: models_by_city(c)[city]["engine"] == "lleaves", 120, "the swap")
            swapped = load.count()
            wait_for(lambda: load.count() >= swapped + 50, 60, "answers after the swap")
        errors = load.errors()
        assert errors == [], f"{len(errors)} failed requests, first: {errors[:3]}"
        assert set(load.latest()) == {version}
        assert engine_metric(c, registered, city, "lleaves") == 1.0  # fmt: skip
        assert engine_metric(c, registered, city, "lightgbm") is None  # fmt: skip
        assert metric(c, "matchmaking_compile_seconds_count") == 1.0
        assert models_by_city(c)[city]["compile_seconds"] > 0
        expected = expected_scores(registered, city, version, body)
        for answer in (first.json(), c.post("/v1/rank", json=body).json()):
            got = {x["driver_id"]: x["score"] for x in answer["candidates"]}
            assert all(abs(got[d] - s) <= 1e-9 for d, s in expected.items())


# -- 2. registry calls per poll independent of the number of models ---------------------------


def poll_calls(reg: Registered, cities: list[str]) -> list[tuple[str, str]]:
    """The registry requests of one poll of a store holding ``cities``' models."""
    with CountingProxy(reg.uri) as proxy:
        settings = serve_settings(
            reg, tracking_uri=proxy.uri, hot_cities=[], max_models=len(cities), poll_interval_s=60
        )
        store = ModelStore(settings, Metrics())
        try:
            for city in cities:
                store.load(city)
            assert len(store.loaded()) == len(cities)
            proxy.take()
            store.poll_once()
            calls = proxy.take()
            counted = store.metrics.registry.get_sample_value("matchmaking_registry_poll_calls")
            assert counted == len(calls), "the service's own count is what went on the wire"
            return calls
        finally:
            store.close()


def fleet(server_uri: str, tmp: Path, n: int) -> tuple[Registered, list[str]]:
    """``n`` catalogue cities with a Production model each (copies of one model), under a
    fresh prefix."""
    reg = Registered(uri=server_uri, prefix=f"fleet{uuid.uuid4().hex[:8]}", tmp=tmp)
    cities = catalogue().ids()[:n]
    (tmp / str(n)).mkdir()
    table = write_driver_table(tmp / str(n) / "driver_table.parquet", KNOWN_DRIVERS, 1)
    register_copies(server_uri, [reg.name(c) for c in cities], random_booster(1), table)
    return reg, cities


def test_registry_calls_per_poll_are_the_same_with_1_and_50_models(
    tracking_server: TrackingServer, tmp_path: Path
) -> None:
    """One paged search per poll, however many models are loaded (was one call per model)."""
    one = poll_calls(*fleet(tracking_server.uri, tmp_path, 1))
    fifty = poll_calls(*fleet(tracking_server.uri, tmp_path, 50))
    assert len(one) == len(fifty) == 1, (one, fifty)
    assert all("registered-models/search" in path for _, path in one + fifty)


def test_a_poll_swaps_only_the_model_whose_production_moved(own_registry: Registered) -> None:
    reg = own_registry
    reg.register("jakarta", seed=1)
    reg.register("surabaya", seed=2)
    v2 = reg.register("surabaya", seed=3, alias=None)
    with CountingProxy(reg.uri) as proxy:
        settings = serve_settings(reg, tracking_uri=proxy.uri, hot_cities=["jakarta", "surabaya"])
        metrics = Metrics()
        store = ModelStore(settings, metrics)
        try:
            store.preload()
            set_alias(reg.uri, reg.name("surabaya"), v2)
            proxy.take()
            store.poll_once()
            calls = proxy.take()
            served = {m.city.id: m.version for m in store.loaded()}
        finally:
            store.close()
    assert served == {"jakarta": reg.versions["jakarta"][0], "surabaya": v2}
    searches = [p for _, p in calls if "registered-models/search" in p]
    details = [p for _, p in calls if "model-versions/get?" in p]
    assert len(searches) == 1 and len(details) == 1, calls  # the moved model's version only


# -- 3. shards and the cache bound -------------------------------------------------------------

SHARDS = {"west": ["jakarta", "bandung"], "east": ["surabaya"]}


def test_a_pool_refuses_a_city_of_another_pool_naming_it(registered: Registered) -> None:
    settings = serve_settings(registered, shards=SHARDS, shard="west", hot_cities=["jakarta"])
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as c:
        foreign = rank_body(city="surabaya", centre=SURABAYA)
        for path in ("/v1/rank", "/v1/cities/surabaya/rank"):
            r = c.post(path, json=foreign)
            assert r.status_code == 421, (path, r.text)
            err = r.json()["error"]
            assert err["code"] == "wrong_shard" and "'east'" in err["message"], err
            assert r.headers["x-matchmaking-pool"] == "east"
        bookings = [{k: v for k, v in foreign["booking"].items() if k != "city"}]
        drivers = [
            {k: v for k, v in d.items() if k != "eta_seconds"} for d in foreign["candidates"]
        ]
        r = c.post(
            "/v1/cities/surabaya/match",
            json={"city": "surabaya", "bookings": bookings, "drivers": drivers},
        )
        assert r.status_code == 421 and r.headers["x-matchmaking-pool"] == "east"
        # Its own city, by every route.
        own = rank_body()
        assert c.post("/v1/rank", json=own).status_code == 200
        assert c.post("/v1/cities/jakarta/rank", json=own).status_code == 200
        r = c.post("/v1/rank", json=own, headers={"X-Matchmaking-City": "jakarta"})
        assert r.status_code == 200
        # A path or header naming another city than the body is refused, not scored.
        r = c.post("/v1/cities/bandung/rank", json=own)
        assert r.status_code == 422 and r.json()["error"]["details"][0]["type"] == "city_mismatch"
        r = c.post("/v1/rank", json=own, headers={"X-Matchmaking-City": "surabaya"})
        assert r.status_code == 422
        # A catalogue city no pool owns.
        r = c.post("/v1/rank", json=rank_body(city="medan", centre=(3.5952, 98.6722)))
        assert r.status_code == 404 and r.json()["error"]["code"] == "city_not_sharded"
        # The foreign city was never loaded into this pool's cache.
        assert set(models_by_city(c)) == {"jakarta"}
        assert metric(c, "matchmaking_model_loads_total", city="surabaya") is None


def test_a_pool_with_the_catch_all_owns_every_unnamed_city(registered: Registered) -> None:
    shards = {"west": ["jakarta"], "rest": ["*"]}
    settings = serve_settings(registered, shards=shards, shard="rest", hot_cities=[])
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as c:
        assert (
            c.post("/v1/rank", json=rank_body(city="surabaya", centre=SURABAYA)).status_code == 200
        )
        r = c.post("/v1/rank", json=rank_body())
        assert r.status_code == 421 and r.headers["x-matchmaking-pool"] == "west"


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"hot_cities": ["jakarta", "surabaya", "bandung"], "max_models": 2}, "MAX_MODELS"),
        ({"shards": SHARDS, "shard": "north"}, "MATCHMAKING_SERVE_SHARD"),
        ({"shards": SHARDS, "shard": "west", "hot_cities": ["surabaya"]}, "not in pool 'west'"),
        ({"shards": {"a": ["jakarta"], "b": ["jakarta"]}, "shard": "a"}, "is in pools"),
        ({"shards": {"a": ["*"], "b": ["*"]}, "shard": "a"}, "at most one pool"),
    ],
)
def test_settings_that_cannot_hold_or_route_are_refused(
    values: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        ServeSettings(**values)  # type: ignore[arg-type]


def test_hot_models_are_never_evicted_so_readiness_holds(registered: Registered) -> None:
    """A cache exactly the size of the hot set: cold cities come and go, the hot one stays."""
    settings = serve_settings(registered, max_models=1, hot_cities=["jakarta"])
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as c:
        for _ in range(3):
            assert (
                c.post("/v1/rank", json=rank_body(city="surabaya", centre=SURABAYA)).status_code
                == 200
            )
            assert c.get("/readyz").status_code == 200
            assert "jakarta" in models_by_city(c)
        assert c.post("/v1/rank", json=rank_body()).status_code == 200


# -- the webhook push path ---------------------------------------------------------------------

SECRET = "whsec-test"


def delivery(body: bytes, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    """The headers MLflow sends with a signed delivery (``X-MLflow-*``)."""
    delivery_id, stamp = str(uuid.uuid4()), str(int(at if at is not None else time.time()))
    return {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": signature(secret.encode(), delivery_id, stamp, body),
    }


def test_our_signature_is_mlflows() -> None:
    """The verifier computes what MLflow's webhook delivery signs (checked against MLflow's own
    signer, so a change of format upstream fails here)."""
    from mlflow.webhooks.delivery import _generate_hmac_signature

    payload = json.dumps({"entity": "model_version_alias", "action": "created", "data": {}})
    ours = signature(SECRET.encode(), "d-1", "1700000000", payload.encode())
    assert ours == _generate_hmac_signature(SECRET, "d-1", "1700000000", payload)
    assert base64.b64decode(ours.split(",", 1)[1])


def test_a_signed_webhook_delivery_swaps_without_waiting_for_the_poll(
    own_registry: Registered,
) -> None:
    reg, city = own_registry, "jakarta"
    v1 = reg.register(city, seed=1)
    v2 = reg.register(city, seed=5, alias=None)
    settings = serve_settings(
        reg, poll_interval_s=600, webhook_secret=SECRET, compile_forests=False
    )
    payload = json.dumps(
        {"entity": "model_version_alias", "action": "created",
         "data": {"name": reg.name(city), "alias": "production", "version": v2}}
    ).encode()  # fmt: skip
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as c:
        assert c.post("/v1/rank", json=rank_body()).json()["version"] == v1
        set_alias(reg.uri, reg.name(city), v2)
        bad = delivery(payload, secret="other-secret")
        r = c.post("/v1/registry/webhook", content=payload, headers=bad)
        assert r.status_code == 401 and r.json()["error"]["code"] == "bad_signature"
        stale = delivery(payload, at=time.time() - 3600)
        assert c.post("/v1/registry/webhook", content=payload, headers=stale).status_code == 401
        time.sleep(1.0)
        assert c.post("/v1/rank", json=rank_body()).json()["version"] == v1, "no poll yet"
        r = c.post("/v1/registry/webhook", content=payload, headers=delivery(payload))
        assert r.status_code == 202, r.text
        wait_for(lambda: c.post("/v1/rank", json=rank_body()).json()["version"] == v2, 30, "v2")
        assert metric(c, "matchmaking_registry_webhooks_total", result="accepted") == 1.0
        assert metric(c, "matchmaking_registry_webhooks_total", result="rejected") == 2.0


def test_the_webhook_is_off_without_a_secret(live: ServerThread) -> None:
    with httpx.Client(base_url=live.url) as c:
        r = c.post("/v1/registry/webhook", content=b"{}", headers=delivery(b"{}"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "webhook_disabled"
