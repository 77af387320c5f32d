"""The scoring service against a real uvicorn server and the real tracking server."""

from __future__ import annotations

import copy
import itertools
import json
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from support.assignment_oracle import brute_force_best
from support.live import (
    BANDUNG,
    JAKARTA,
    SURABAYA,
    Answer,
    Load,
    ServerThread,
    TcpProxy,
    metric,
    percentile,
    rank_body,
    wait_for,
)
from support.model_factory import set_alias
from support.registered import KNOWN_DRIVERS, Registered, expected_scores, serve_settings

from matchmaking.evaluation.matching import greedy_assignment, total_score
from serving.app import create_app

pytestmark = pytest.mark.integration


def test_health_readiness_and_models(live: ServerThread, registered: Registered) -> None:
    with httpx.Client(base_url=live.url) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ok"
        assert ready.json()["registry"]["reachable"] is True
        models = c.get("/v1/models").json()["models"]
        jakarta = next(m for m in models if m["city"] == "jakarta")
        assert jakarta["model"] == registered.name("jakarta")
        assert jakarta["version"] == registered.versions["jakarta"][0]
        assert jakarta["source"] == "alias:production"


def test_rank_scores_equal_booster_predict(live: ServerThread, registered: Registered) -> None:
    body = rank_body(n=50, seed=11)
    body["candidates"][3]["driver_id"] = "brand-new-driver"  # not in the driver table
    del body["candidates"][4]["eta_seconds"]  # estimated
    body["booking"]["fare"] = 42_000.0
    with httpx.Client(base_url=live.url) as c:
        r = c.post("/v1/rank", json=body, headers={"X-Request-ID": "req-42"})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "req-42"
    out = r.json()
    version = registered.versions["jakarta"][0]
    assert (out["booking_id"], out["city"], out["version"]) == ("b-11", "jakarta", version)
    assert out["model"] == registered.name("jakarta") and out["fallback"] is False
    assert out["score_kind"] == "probability"
    expected = expected_scores(registered, "jakarta", version, body)
    got = {c["driver_id"]: c["score"] for c in out["candidates"]}
    assert got.keys() == expected.keys()
    for d, score in expected.items():
        assert abs(got[d] - score) <= 1e-9
    scores = [c["score"] for c in out["candidates"]]
    assert scores == sorted(scores, reverse=True)
    assert [c["rank"] for c in out["candidates"]] == list(range(1, 51))


def _mutate(path: list[Any], value: Any) -> Any:
    def apply(body: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(body)
        target: Any = body
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return body

    return apply


_DELETE = object()
_FAR = {"lat": BANDUNG[0], "lng": BANDUNG[1] + 1.0}

BAD_BODIES = {
    "missing coordinate": (
        _mutate(["booking", "pickup", "lng"], _DELETE),
        ["booking", "pickup", "lng"],
    ),
    "latitude out of range": (
        _mutate(["booking", "pickup", "lat"], 91.0),
        ["booking", "pickup", "lat"],
    ),
    "longitude out of range": (
        _mutate(["candidates", 1, "location", "lng"], -181.0),
        ["candidates", 1, "location", "lng"],
    ),
    "coordinates outside the city": (
        _mutate(["candidates", 2, "home"], _FAR),
        ["candidates", 2, "home"],
    ),
    "rating below 1": (_mutate(["candidates", 0, "rating"], 0.5), ["candidates", 0, "rating"]),
    "rating above 5": (_mutate(["candidates", 0, "rating"], 5.01), ["candidates", 0, "rating"]),
    "duplicate driver": (
        _mutate(["candidates", 1, "driver_id"], "d-0"),
        ["candidates", 1, "driver_id"],
    ),
    "zero candidates": (_mutate(["candidates"], []), ["candidates"]),
    "negative eta": (
        _mutate(["candidates", 0, "eta_seconds"], -5),
        ["candidates", 0, "eta_seconds"],
    ),
    "naive timestamp": (
        _mutate(["booking", "requested_at"], "2026-11-27T08:15:00"),
        ["booking", "requested_at"],
    ),
    "implausible year": (
        _mutate(["booking", "requested_at"], "0001-01-01T00:00:00+07:00"),
        ["booking", "requested_at"],
    ),
    "unknown field": (_mutate(["booking", "surge"], 2.0), ["booking", "surge"]),
    "string coordinate": (
        _mutate(["booking", "dropoff", "lat"], "north"),
        ["booking", "dropoff", "lat"],
    ),
    "missing booking": (_mutate(["booking"], _DELETE), ["booking"]),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_input_is_422_with_field_reasons(live: ServerThread, case: str) -> None:
    mutate, loc = BAD_BODIES[case]
    with httpx.Client(base_url=live.url) as c:
        r = c.post("/v1/rank", json=mutate(rank_body()))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and err["request_id"]
    assert loc in [d["loc"] for d in err["details"]], err


PLACEHOLDER = 4.321987  # a value no generated body has


def with_token(path: list[str | int], token: str) -> str:
    """A valid /v1/rank body as JSON text whose value at ``path`` is the raw ``token``: the
    only difference from a body that is answered 200."""
    body = rank_body()
    target: Any = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = PLACEHOLDER
    text = json.dumps(body)
    assert text.count(str(PLACEHOLDER)) == 1
    return text.replace(str(PLACEHOLDER), token)


# field -> (where, a finite value that is fine there)
NON_FINITE_FIELDS = {
    "rating": (["candidates", 0, "rating"], "4.5"),
    "eta": (["candidates", 1, "eta_seconds"], "120.0"),
    "pickup latitude": (["booking", "pickup", "lat"], "-6.2"),
    "home longitude": (["candidates", 2, "home", "lng"], "106.85"),
}


@pytest.mark.parametrize("field", list(NON_FINITE_FIELDS))
def test_non_finite_numbers_are_refused_on_their_own(live: ServerThread, field: str) -> None:
    """Infinity, NaN and overflowing literals in one field, nothing else changed: 422.

    The control (a finite value at the same place) answers 200, so the refusal is the number's.
    """
    path, finite = NON_FINITE_FIELDS[field]
    headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=live.url) as c:
        r = c.post("/v1/rank", content=with_token(path, finite), headers=headers)
        assert r.status_code == 200, r.text
        for token in ("Infinity", "-Infinity", "NaN", "1e999", "-1e999"):
            r = c.post("/v1/rank", content=with_token(path, token), headers=headers)
            assert r.status_code == 422, (token, r.text)
            details = r.json()["error"]["details"]
            if token.lstrip("-").startswith("1e"):  # valid JSON, out of range: named
                assert path in [d["loc"] for d in details], (token, details)
            else:  # not JSON at all
                assert details[0]["type"] == "json_invalid", (token, details)


def test_raw_bodies_are_refused_with_4xx(live: ServerThread) -> None:
    valid = json.dumps(rank_body())
    cases = {
        "NaN coordinate": (valid.replace('"lat": -6.2088', '"lat": NaN', 1), 422),
        "Infinity rating": (with_token(["candidates", 0, "rating"], "Infinity"), 422),
        "malformed JSON": ('{"booking": ', 422),
        "not an object": ("[1, 2, 3]", 422),
        "empty body": ("", 422),
        "not UTF-8": (b"\xff\xfe{}", 422),
        "oversized body": ('{"pad": "' + "x" * 300_000 + '"}', 413),
    }
    with httpx.Client(base_url=live.url) as c:
        for name, (content, status) in cases.items():
            r = c.post("/v1/rank", content=content, headers={"Content-Type": "application/json"})
            assert r.status_code == status, (name, r.text)
            assert r.json()["error"]["code"], name
        too_many = rank_body(n=201)
        r = c.post("/v1/rank", json=too_many)
        assert r.status_code == 422 and r.json()["error"]["details"][0]["type"] == "too_long"
        assert c.get("/v1/rank").status_code == 405


def test_unknown_city_and_city_without_model_are_404(live: ServerThread) -> None:
    with httpx.Client(base_url=live.url) as c:
        r = c.post("/v1/rank", json=rank_body(city="atlantis"))
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_city"
        r = c.post("/v1/rank", json=rank_body(city="bandung", centre=BANDUNG))
        assert r.status_code == 404, r.text
        err = r.json()["error"]
        assert err["code"] == "no_production_model" and "bandung" in err["message"]


def test_auth_and_flagged_fallback(registered: Registered) -> None:
    settings = serve_settings(registered, auth_token="s3cret", fallback_nearest_eta=True)
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as c:
        assert c.post("/v1/rank", json=rank_body()).status_code == 401
        r = c.post("/v1/rank", json=rank_body(), headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/models").status_code == 401
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        auth = {"Authorization": "Bearer s3cret"}
        ok = c.post("/v1/rank", json=rank_body(), headers=auth).json()
        assert ok["fallback"] is False and ok["version"] == registered.versions["jakarta"][0]
        body = rank_body(city="bandung", centre=BANDUNG, n=6)
        del body["candidates"][0]["eta_seconds"]
        r = c.post("/v1/rank", json=body, headers=auth)
        assert r.status_code == 200, r.text
        out = r.json()
        assert (
            out["fallback"] is True and out["model"] is None and out["score_kind"] == "nearest_eta"
        )
        etas = [x["eta_seconds"] for x in out["candidates"]]
        assert etas == sorted(etas) and all(x["score"] is None for x in out["candidates"])
        assert metric(c, "matchmaking_fallback_answers_total", city="bandung") == 1.0


def test_match_maximises_total_predicted_acceptance(
    live: ServerThread, registered: Registered
) -> None:
    base = rank_body(n=4, seed=5, with_eta=False)
    bookings = []
    for i, (dlat, dlng) in enumerate(((0.0, 0.0), (0.01, -0.01), (-0.012, 0.008))):
        b = {k: v for k, v in base["booking"].items() if k != "city"}
        b = copy.deepcopy(b)
        b["booking_id"] = f"m-{i}"
        b["pickup"] = {"lat": b["pickup"]["lat"] + dlat, "lng": b["pickup"]["lng"] + dlng}
        bookings.append(b)
    drivers = base["candidates"]
    with httpx.Client(base_url=live.url) as c:
        r = c.post("/v1/match", json={"city": "jakarta", "bookings": bookings, "drivers": drivers})
    assert r.status_code == 200, r.text
    out = r.json()
    version = registered.versions["jakarta"][0]
    # The score matrix the service should have seen: each booking against the whole pool.
    scores = np.array(
        [
            [
                expected_scores(
                    registered, "jakarta", version, {"booking": b, "candidates": drivers}
                )[d["driver_id"]]
                for d in drivers
            ]
            for b in bookings
        ]
    )
    best = max(
        sum(scores[i, j] for i, j in enumerate(perm))
        for perm in itertools.permutations(range(len(drivers)), len(bookings))
    )
    assigned = [a["driver_id"] for a in out["assignments"]]
    assert len(set(assigned)) == len(bookings) and None not in assigned
    assert out["total_score"] == pytest.approx(best, abs=1e-9)
    ids = [d["driver_id"] for d in drivers]
    total = sum(scores[i, ids.index(d)] for i, d in enumerate(assigned))
    assert total == pytest.approx(best, abs=1e-9)


def match_instance(
    seed: int, n_b: int, n_d: int, centre: tuple[float, float] = JAKARTA, spread: float = 0.03
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``n_b`` bookings and a pool of ``n_d`` drivers scattered within ``spread`` degrees."""
    rng = np.random.default_rng(seed)
    lat, lng = centre

    def near() -> dict[str, float]:
        return {
            "lat": lat + float(rng.uniform(-spread, spread)),
            "lng": lng + float(rng.uniform(-spread, spread)),
        }

    bookings = [
        {
            "booking_id": f"m-{seed}-{i}",
            "pickup": near(),
            "dropoff": near(),
            "requested_at": "2026-11-27T08:15:00+07:00",
        }
        for i in range(n_b)
    ]
    drivers = [
        {
            "driver_id": KNOWN_DRIVERS[j],
            "location": near(),
            "rating": round(float(rng.uniform(3.5, 5.0)), 2),
            "home": near(),
        }
        for j in range(n_d)
    ]
    return bookings, drivers


def match_scores(
    reg: Registered,
    version: str,
    bookings: list[dict[str, Any]],
    drivers: list[dict[str, Any]],
    city: str = "jakarta",
) -> np.ndarray:
    """The score matrix the service should see: each booking against the whole pool."""
    by_driver = [
        expected_scores(reg, city, version, {"booking": {**b, "city": city}, "candidates": drivers})
        for b in bookings
    ]
    return np.array([[row[d["driver_id"]] for d in drivers] for row in by_driver])


def post_match(
    c: httpx.Client, bookings: list[dict[str, Any]], drivers: list[dict[str, Any]]
) -> tuple[dict[str, Any], float]:
    """The /v1/match answer, and the total of its assignment recomputed from its scores."""
    r = c.post("/v1/match", json={"city": "jakarta", "bookings": bookings, "drivers": drivers})
    assert r.status_code == 200, r.text
    out = r.json()
    assert [a["booking_id"] for a in out["assignments"]] == [b["booking_id"] for b in bookings]
    assigned = [a["driver_id"] for a in out["assignments"] if a["driver_id"] is not None]
    assert len(assigned) == len(set(assigned)), "a driver was assigned twice"
    assert len(assigned) == min(len(bookings), len(drivers)), "every pair adds to the total"
    total = sum(a["score"] for a in out["assignments"] if a["driver_id"] is not None)
    assert out["total_score"] == pytest.approx(total, abs=1e-9)
    return out, total


def test_match_is_optimal_where_greedy_is_not(live: ServerThread, registered: Registered) -> None:
    """Instances on which dispatching bookings one by one (greedy) loses acceptance: the
    endpoint's total is the brute-force optimum and beats greedy. Fails with /v1/match greedy.

    The first instance is built as the classic trap (booking 0 takes, by a hair, the driver
    booking 1 needs); the others are the first random pools where greedy and optimal differ.
    """
    version = registered.versions["jakarta"][0]
    lat, lng = JAKARTA
    km = 1 / 111.0  # degrees of latitude per km
    trap = (
        [
            {
                "booking_id": f"trap-{i}",
                "pickup": {"lat": lat + dy * km, "lng": lng},
                "dropoff": {"lat": lat - 0.05, "lng": lng + 0.04},
                "requested_at": "2026-11-27T08:15:00+07:00",
            }
            for i, dy in enumerate((0.0, 2.0))
        ],
        [
            {
                "driver_id": f"new-{name}",  # unknown drivers: the same history for both
                "location": {"lat": lat + dy * km, "lng": lng},
                "rating": 4.8,
                "home": {"lat": lat, "lng": lng},
            }
            # A: 0.6 km from booking 0, 1.4 km from booking 1; B: 0.8 km and 2.8 km.
            for name, dy in (("a", 0.6), ("b", -0.8))
        ],
    )
    instances = [trap]
    for seed in range(200):
        if len(instances) == 8:
            break
        bookings, drivers = match_instance(seed, 3, 4)
        scores = match_scores(registered, version, bookings, drivers)
        if total_score(scores, greedy_assignment(scores)) < brute_force_best(scores) - 0.01:
            instances.append((bookings, drivers))
    assert len(instances) == 8, "too few random pools where greedy and optimal differ"
    with httpx.Client(base_url=live.url) as c:
        for bookings, drivers in instances:
            scores = match_scores(registered, version, bookings, drivers)
            best = brute_force_best(scores)
            greedy = total_score(scores, greedy_assignment(scores))
            assert greedy < best - 0.01, "the instance must tell greedy from optimal"
            out, total = post_match(c, bookings, drivers)
            assert total == pytest.approx(best, abs=1e-9), bookings[0]["booking_id"]
            assert total > greedy + 0.01
            ids = [d["driver_id"] for d in drivers]
            chosen = [ids.index(a["driver_id"]) for a in out["assignments"]]
            assert sum(scores[i, j] for i, j in enumerate(chosen)) == pytest.approx(best, abs=1e-9)


def test_match_equals_brute_force_on_random_pools(
    live: ServerThread, registered: Registered
) -> None:
    """Random pool sizes, more bookings than drivers included (someone goes unassigned)."""
    version = registered.versions["jakarta"][0]
    rng = np.random.default_rng(3)
    with httpx.Client(base_url=live.url) as c:
        for seed in range(12):
            n_b, n_d = (int(v) for v in rng.integers(1, 6, 2))
            bookings, drivers = match_instance(100 + seed, n_b, n_d, spread=0.05)
            scores = match_scores(registered, version, bookings, drivers)
            out, total = post_match(c, bookings, drivers)
            assert total == pytest.approx(brute_force_best(scores), abs=1e-9), (n_b, n_d)
            unassigned = [a for a in out["assignments"] if a["driver_id"] is None]
            assert len(unassigned) == max(0, n_b - n_d)
            assert all(a["score"] is None for a in unassigned)


def test_match_rejects_duplicates_and_oversized_pools(live: ServerThread) -> None:
    base = rank_body(n=3, with_eta=False)
    booking = {k: v for k, v in base["booking"].items() if k != "city"}
    with httpx.Client(base_url=live.url) as c:
        r = c.post(
            "/v1/match",
            json={"city": "jakarta", "bookings": [booking, booking], "drivers": base["candidates"]},
        )
        assert r.status_code == 422
        assert ["bookings", 1, "booking_id"] in [d["loc"] for d in r.json()["error"]["details"]]
        r = c.post(
            "/v1/match",
            json={"city": "jakarta", "bookings": [booking] * 51, "drivers": base["candidates"]},
        )
        assert r.status_code == 422


def phases(answers: list[Answer]) -> list[str | None]:
    """The versions one client saw, consecutive repeats collapsed: [v1, v2, v1] for a clean
    promotion then rollback."""
    versions = [a.version for a in answers]
    return [v for i, v in enumerate(versions) if i == 0 or v != versions[i - 1]]


# A swap may cost some latency (the new forest loads and compiles in the same process), but
# never a stall: the worst request during a swap stays within this many times the p99 measured
# before it, or within STALL_FLOOR_S on a machine so loaded that the baseline p99 says little.
SWAP_LATENCY_RATIO = 50.0
STALL_FLOOR_S = 2.0


def test_live_swap_under_load_and_rollback(own_registry: Registered) -> None:
    """Two clients keep ranking while the alias moves to v2 and then back to v1.

    Fails when a request fails (transport errors included), when a client sees a version go
    back and forth, or when the swap stalls requests (worst latency during the swap against the
    p99 before it, same run). A swap that drops the old model and stalls 3 s before the new one
    loads fails here.
    """
    reg, city = own_registry, "surabaya"
    body = rank_body(city=city, centre=SURABAYA, n=50)
    v1 = reg.register(city, seed=2)
    v2 = reg.register(city, seed=3, alias=None)  # registered before the load: not in the baseline
    settings = serve_settings(reg, hot_cities=[city])
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as c:
        with Load(server.url, body, clients=2) as load:
            wait_for(lambda: load.count() >= 10, 30, "first answers")
            warm = time.monotonic()
            wait_for(lambda: load.count() >= 200 and time.monotonic() - warm > 2, 60, "baseline")
            promoted = time.monotonic()
            set_alias(reg.uri, reg.name(city), v2)  # the promotion
            load.wait_until_all_answer(v2, 60)
            time.sleep(0.5)
            rolled_back = time.monotonic()
            assert metric(c, "matchmaking_model_swaps_total", city=city) == 1.0
            # Scores after the swap are v2's booster's.
            out = c.post("/v1/rank", json=body).json()
            expected = expected_scores(reg, city, v2, body)
            assert all(
                abs(x["score"] - expected[x["driver_id"]]) <= 1e-9 for x in out["candidates"]
            )
            set_alias(reg.uri, reg.name(city), v1)  # the rollback, under the same load
            load.wait_until_all_answer(v1, 60)
            time.sleep(0.5)
            ended = time.monotonic()
        errors = load.errors()
        assert errors == [], f"{len(errors)} failed requests, first: {errors[:3]}"
        for answers in load.answers:
            assert phases(answers) == [v1, v2, v1], "a version went back and forth"
        baseline = percentile(load.seconds(warm, promoted), 99)
        bound = max(SWAP_LATENCY_RATIO * baseline, STALL_FLOOR_S)
        windows = {"swap": (promoted, rolled_back), "rollback": (rolled_back, ended)}
        for what, (since, until) in windows.items():
            worst = max(load.seconds(since, until))
            assert worst <= bound, (
                f"{what}: a request took {worst:.2f} s; the p99 before the swap was "
                f"{baseline * 1000:.0f} ms (bound {bound:.2f} s)"
            )
        assert metric(c, "matchmaking_model_swaps_total", city=city) == 2.0
        # Scores after the rollback are v1's booster's again.
        out = c.post("/v1/rank", json=body).json()
        expected = expected_scores(reg, city, v1, body)
        assert all(abs(x["score"] - expected[x["driver_id"]]) <= 1e-9 for x in out["candidates"])


def test_registry_outage_keeps_serving_and_is_reported(registered: Registered) -> None:
    target = urlsplit(registered.uri)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 80).start()
    settings = serve_settings(registered, tracking_uri=proxy.uri)
    try:
        with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as c:
            assert c.post("/v1/rank", json=rank_body()).status_code == 200
            assert metric(c, "matchmaking_registry_up") == 1.0
            proxy.cut()
            wait_for(
                lambda: c.get("/readyz").json()["registry"]["reachable"] is False, 30, "outage seen"
            )
            ready = c.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "degraded"
            assert ready.json()["registry"]["last_error"]
            for _ in range(20):
                r = c.post("/v1/rank", json=rank_body())
                assert (
                    r.status_code == 200
                    and r.json()["version"] == registered.versions["jakarta"][0]
                )
            assert metric(c, "matchmaking_registry_up") == 0.0
            assert (metric(c, "matchmaking_registry_errors_total") or 0) >= 1
            # A city not in memory cannot be loaded: 503, not 500.
            r = c.post("/v1/rank", json=rank_body(city="surabaya", centre=SURABAYA))
            assert r.status_code == 503 and r.json()["error"]["code"] == "registry_unavailable"
    finally:
        proxy.cut()


def test_lru_keeps_at_most_max_models(registered: Registered) -> None:
    settings = serve_settings(registered, max_models=1, hot_cities=[])
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as c:
        assert c.post("/v1/rank", json=rank_body()).status_code == 200
        r = c.post("/v1/rank", json=rank_body(city="surabaya", centre=SURABAYA))
        assert r.status_code == 200
        assert [m["city"] for m in c.get("/v1/models").json()["models"]] == ["surabaya"]
        assert metric(c, "matchmaking_model_evictions_total") == 1.0
        assert c.post("/v1/rank", json=rank_body()).status_code == 200  # reloaded on demand


def test_stage_production_is_used_when_the_alias_is_absent(own_registry: Registered) -> None:
    from mlflow.tracking import MlflowClient

    city, centre = "medan", (3.5952, 98.6722)
    version = own_registry.register(city, seed=4, alias=None)
    client = MlflowClient(tracking_uri=own_registry.uri, registry_uri=own_registry.uri)
    settings = serve_settings(own_registry, hot_cities=[])
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as c:
        body = rank_body(city=city, centre=centre)
        assert c.post("/v1/rank", json=body).status_code == 404  # registered, not promoted
        with pytest.warns(FutureWarning):
            client.transition_model_version_stage(own_registry.name(city), version, "Production")
        # A failed load stands for one poll interval (0.3 s here), then the next request loads.
        deadline = time.monotonic() + 10
        r = c.post("/v1/rank", json=body)
        while r.status_code == 404 and time.monotonic() < deadline:
            time.sleep(0.1)
            r = c.post("/v1/rank", json=body)
        assert r.status_code == 200 and r.json()["version"] == version
        source = {m["city"]: m["source"] for m in c.get("/v1/models").json()["models"]}
        assert source[city] == "stage:Production"
