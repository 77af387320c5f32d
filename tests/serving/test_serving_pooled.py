"""Country models in the scoring service (issue 15, item 4): a city with no Production model of
its own, a new market among them, is ranked by its country's pooled model from its first
booking, and the answer, the decision log and ``/metrics`` say so; when its own model reaches
Production (or the ``serving.scope`` tag flips) the service switches live, with no restart.

Real parts only: a uvicorn server in a thread, the session's MLflow tracking server over HTTP,
the decision log written to a lake directory, the new market defined only in a markets file
named by ``MATCHMAKING_MARKETS`` (``tests/markets/garut.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow.tracking import MlflowClient
from support.live import BANDUNG, CountingProxy, Load, ServerThread, rank_body, wait_for
from support.registered import Registered, expected_scores, serve_settings

from matchmaking.lake import serving_log
from matchmaking.registry import conventions
from serving.app import create_app
from serving.metrics import Metrics
from serving.registry_watch import ModelStore

MARKETS = Path(__file__).resolve().parents[1] / "markets" / "garut.yaml"
NEW = "garut"  # in no catalogue file under src/: only in MARKETS
GARUT = (-7.2279, 107.9087)


@pytest.fixture
def new_market(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MATCHMAKING_MARKETS", str(MARKETS))
    return NEW


def _scores(answer: dict[str, Any]) -> dict[str, float]:
    return {c["driver_id"]: c["score"] for c in answer["candidates"]}


def _assert_scores(answer: dict[str, Any], expected: dict[str, float]) -> None:
    got = _scores(answer)
    assert got.keys() == expected.keys()
    gap = max(abs(got[d] - s) for d, s in expected.items())
    assert gap <= 1e-9, f"scores differ from Booster.predict by {gap}"


def _samples(client: httpx.Client, name: str, **labels: str) -> dict[str, float]:
    """The samples of ``name`` whose labels include ``labels``: label string -> value."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    out = {}
    for line in client.get("/metrics").text.splitlines():
        head, _, value = line.rpartition(" ")
        if head.startswith(name + "{") and all(w in head for w in want):
            out[head] = float(value)
    return out


def test_a_new_market_is_ranked_by_its_country_model_then_switches_live_to_its_own(
    new_market: str, own_registry: Registered, tmp_path: Path
) -> None:
    reg = own_registry
    country_v = reg.register_country("ID", seed=11)
    country = reg.country_name("ID")
    lake = tmp_path / "lake"
    settings = serve_settings(
        reg, hot_cities=[], lake_uri=str(lake), decision_flush_seconds=0.2, poll_interval_s=0.3
    )
    body = rank_body(city=new_market, centre=GARUT, n=8, seed=3)
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as c:
        first = c.post("/v1/rank", json=body, headers={"X-Request-ID": "first-booking"})
        assert first.status_code == 200, first.text
        a = first.json()
        assert (a["model"], a["version"], a["model_scope"]) == (country, country_v, "country")
        assert a["fallback"] is False and a["arm"] == "champion"
        expected = expected_scores(reg, new_market, country_v, body, country="ID")
        _assert_scores(a, expected)
        # The context columns are the new market's: another city's would score differently.
        elsewhere = expected_scores(reg, "bandung", country_v, body, country="ID")
        assert max(abs(expected[d] - elsewhere[d]) for d in expected) > 1e-6

        routes = c.get("/v1/models").json()["routes"]
        assert routes[new_market]["model"] == country
        assert routes[new_market]["model_scope"] == "country"
        answers = _samples(
            c, "matchmaking_answers_total", city=new_market, model_scope="country", model=country
        )
        assert sum(answers.values()) == 1.0 and f'version="{country_v}"' in next(iter(answers))
        gauge = _samples(c, "matchmaking_city_model", city=new_market)
        assert gauge == {
            f'matchmaking_city_model{{city="{new_market}",model="{country}",'
            f'model_scope="country"}}': float(country_v)
        }

        # Its own model reaches Production: the poller switches it live, under load.
        own_v = reg.register(new_market, seed=12)
        own = reg.name(new_market)
        with Load(server.url, body, clients=2) as load:
            wait_for(lambda: c.post("/v1/rank", json=body).json()["model"] == own, 30, "the switch")
            switched = load.count()
            wait_for(lambda: load.count() >= switched + 20, 60, "answers after the switch")
        assert load.errors() == [], load.errors()[:3]
        after = c.post("/v1/rank", json=body, headers={"X-Request-ID": "own-model"}).json()
        assert (after["model"], after["version"], after["model_scope"]) == (own, own_v, "city")
        _assert_scores(after, expected_scores(reg, new_market, own_v, body))
        assert c.get("/v1/models").json()["routes"][new_market]["model_scope"] == "city"
        assert _samples(c, "matchmaking_city_model", city=new_market) == {
            f'matchmaking_city_model{{city="{new_market}",model="{own}",'
            f'model_scope="city"}}': float(own_v)
        }
        models = {m["model"] for m in c.get("/v1/models").json()["models"]}
        assert country not in models, "the country model is released once no city uses it"
    # Shutdown flushed the decision log.
    log = serving_log.read_log(lake, "decisions", new_market).to_pylist()
    by_request = {r["request_id"]: r for r in log}
    assert (
        by_request["first-booking"]["model_name"],
        by_request["first-booking"]["model_version"],
        by_request["first-booking"]["model_scope"],
    ) == (country, country_v, "country")
    assert by_request["own-model"]["model_scope"] == "city"
    assert by_request["own-model"]["model_name"] == own
    assert {r["model_scope"] for r in log} == {"country", "city"}
    assert all((r["model_scope"] == "country") == (r["model_name"] == country) for r in log)


def test_the_scope_tag_routes_a_city_with_its_own_model_to_the_country_and_back(
    own_registry: Registered,
) -> None:
    """Bandung has its own Production model and a challenger taking every booking; while its
    ``serving.scope`` tag (``matchmaking scope``'s choice, versions current) says country, the
    country model answers and no challenger does. The tag flipped to city: its own model and
    its challenger answer again, without a restart."""
    reg = own_registry
    city, own = "bandung", reg.name("bandung")
    own_v = reg.register(city, seed=21)
    challenger_v = reg.register(city, seed=22, alias="challenger")
    country_v = reg.register_country("ID", seed=23)
    country = reg.country_name("ID")
    client = MlflowClient(tracking_uri=reg.uri, registry_uri=reg.uri)
    client.set_registered_model_tag(own, conventions.CHALLENGER_SHARE_TAG, "1.0")
    for key, value in {
        conventions.SERVING_SCOPE_TAG: "country",
        conventions.SERVING_MODEL_TAG: country,
        conventions.SERVING_CITY_VERSION_TAG: own_v,
        conventions.SERVING_COUNTRY_VERSION_TAG: country_v,
        conventions.SERVING_REASON_TAG: "test: the country model is better on the holdout",
    }.items():
        client.set_registered_model_tag(own, key, value)
    body = rank_body(city=city, centre=BANDUNG, n=6, seed=5)
    settings = serve_settings(reg, hot_cities=[city])
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as c:
        assert c.get("/readyz").status_code == 200
        for k in range(5):
            booking = {**body["booking"], "booking_id": f"b{k}"}
            a = c.post("/v1/rank", json={**body, "booking": booking})
            assert a.status_code == 200, a.text
            got = a.json()
            assert (got["model"], got["model_scope"]) == (country, "country")
            assert got["arm"] == "champion", "a country-scoped city gets no challenger traffic"
        _assert_scores(got, expected_scores(reg, city, country_v, body, country="ID"))
        route = c.get("/v1/models").json()["routes"][city]
        assert route["reason"] == "test: the country model is better on the holdout"

        client.set_registered_model_tag(own, conventions.SERVING_SCOPE_TAG, "city")
        wait_for(
            lambda: c.post("/v1/rank", json=body).json()["model_scope"] == "city", 30, "the flip"
        )
        wait_for(
            lambda: c.post("/v1/rank", json=body).json()["arm"] == "challenger",
            30,
            "the challenger's traffic",
        )
        got = c.post("/v1/rank", json=body).json()
        assert (got["model"], got["version"], got["arm"]) == (own, challenger_v, "challenger")
        _assert_scores(got, expected_scores(reg, city, challenger_v, body))

        # A stale choice (the city's Production moved since it was made) is not followed.
        client.set_registered_model_tag(own, conventions.SERVING_SCOPE_TAG, "country")
        client.set_registered_model_tag(own, conventions.SERVING_CITY_VERSION_TAG, "999")
        c.post("/v1/rank", json=body)
        store = server.app.state.service.store
        before = store.metrics.registry_poll_seconds.collect()[0].samples
        count = next(s.value for s in before if s.name.endswith("_count"))
        wait_for(
            lambda: (
                next(
                    s.value
                    for s in store.metrics.registry_poll_seconds.collect()[0].samples
                    if s.name.endswith("_count")
                )
                >= count + 2
            ),
            30,
            "two more polls",
        )
        assert c.post("/v1/rank", json=body).json()["model_scope"] == "city"


def test_a_poll_is_one_registry_call_with_cities_routed_to_their_country_model(
    new_market: str, own_registry: Registered
) -> None:
    """Routing costs no registry call per poll: three cities on the country model and one on
    its own, one paged search per poll (the routes are decided from its answer)."""
    reg = own_registry
    reg.register_country("ID", seed=31)
    reg.register("surabaya", seed=32)
    with CountingProxy(reg.uri) as proxy:
        settings = serve_settings(reg, tracking_uri=proxy.uri, hot_cities=[], poll_interval_s=60)
        store = ModelStore(settings, Metrics())
        try:
            store.preload()  # the first search: routes decided from it
            for city in (new_market, "bandung", "makassar", "surabaya"):
                store.load(city)
            scopes = {c: r.scope for c, r in store.routes().items()}
            assert scopes == {
                new_market: "country",
                "bandung": "country",
                "makassar": "country",
                "surabaya": "city",
            }
            assert len(store.loaded()) == 2  # one country model serves three cities
            proxy.take()
            store.poll_once()
            calls = proxy.take()
        finally:
            store.close()
    assert len(calls) == 1 and "registered-models/search" in calls[0][1], calls
