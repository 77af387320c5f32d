"""Schemathesis over the live service's OpenAPI schema: no input may produce a 5xx.

Bodies generated from the schema alone almost never name a served city, so on their own they
stop at validation (422) or at the city lookup (404) and never reach the model. Four kinds of
calls therefore go to ``/v1/rank`` and ``/v1/match``:

* ``generated``: schemathesis's positive cases, as they come;
* ``invalid``: its negative cases (bodies that break the schema), which must be refused (4xx);
* ``grounded``: positive cases moved into a served city (Jakarta, Surabaya; now and then
  Bandung, a catalogue city without a model): the city id, every coordinate within about 30 km
  of the centre, clean unique ids (known drivers and new ones), 1-50 candidates (1-8 bookings),
  a request time with a UTC offset within 2000-2100. Ratings, ETAs, trip lengths, fares and
  optional fields stay as schemathesis drew them (edges included). These must reach scoring:
  a floor on the number of 200 answers per endpoint, and every 200 checked for what it says;
* ``grounded_invalid``: a grounded body with one thing made wrong that only the service's own
  checks see (a point outside the city, a duplicate driver, too many candidates, a year out of
  range, ...): exactly 422, naming the field.

A ``raise`` placed after validation in either handler makes the grounded calls answer 500.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    response_schema_conformance,
)
from support.live import BANDUNG, JAKARTA, SURABAYA, ServerThread
from support.registered import KNOWN_DRIVERS, Registered, serve_settings

from serving.app import create_app

pytestmark = pytest.mark.integration

SERVED = {"jakarta": JAKARTA, "surabaya": SURABAYA}
CENTRES = {**SERVED, "bandung": BANDUNG}  # bandung: in the catalogue, no model registered
# Hypothesis favours the first elements: the served cities first, bandung about one call in 5.
CITY_CHOICES = ("jakarta", "surabaya", "jakarta", "surabaya", "bandung")
SPREAD_DEG = 0.3  # generated coordinates are squeezed into +-0.3 degrees of the centre
MAX_CANDIDATES = 50
MAX_BOOKINGS = 8
EXAMPLES = {"generated": 40, "invalid": 60, "grounded": 80, "grounded_invalid": 40}
# At least this many 200 answers per scoring endpoint (of EXAMPLES["grounded"]; most name a served
# city; derandomized, the run gives the same count every time).
MIN_OK = 50


@pytest.fixture(scope="module")
def api_schema(
    registered: Registered, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[schemathesis.schemas.BaseSchema]:
    """The schema as the running service publishes it, bound to that service (logging to a
    lake of its own, so /v1/outcomes stores what it accepts)."""
    lake = tmp_path_factory.mktemp("schema-lake")
    app = create_app(serve_settings(registered, access_log=False, lake_uri=str(lake)))
    with ServerThread(app) as server:
        yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")


# -- grounding: a generated body moved into a city ------------------------------------------


def near(point: dict[str, float], centre: tuple[float, float]) -> dict[str, float]:
    """A generated point squeezed into the city: -90..90 / -180..180 onto +-SPREAD_DEG."""
    return {
        "lat": centre[0] + point["lat"] / 90.0 * SPREAD_DEG,
        "lng": centre[1] + point["lng"] / 180.0 * SPREAD_DEG,
    }


request_times = st.builds(
    lambda t, minutes: t.replace(tzinfo=timezone(timedelta(minutes=minutes))).isoformat(),
    st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2100, 12, 30)),
    st.integers(-14 * 60, 14 * 60),
)


def driver_ids(n: int) -> st.SearchStrategy[list[str]]:
    """``n`` unique ids, mostly drivers of the model's table, some it has never seen."""
    pool = KNOWN_DRIVERS + [f"new-{i}" for i in range(MAX_CANDIDATES)]
    return st.lists(st.sampled_from(pool), min_size=n, max_size=n, unique=True)


def grounded_rank(draw: st.DrawFn, body: dict[str, Any]) -> dict[str, Any]:
    city = draw(st.sampled_from(CITY_CHOICES))
    centre = CENTRES[city]
    n = draw(st.integers(1, MAX_CANDIDATES))
    ids = draw(driver_ids(n))
    generated = body["candidates"]
    booking = dict(body["booking"])
    booking.update(
        booking_id="b-grounded",
        city=city,
        pickup=near(booking["pickup"], centre),
        dropoff=near(booking["dropoff"], centre),
        requested_at=draw(request_times),
    )
    candidates = []
    for i, driver_id in enumerate(ids):
        c = dict(generated[i % len(generated)])  # the generated ones, cycled to size n
        c.update(
            driver_id=driver_id,
            location=near(c["location"], centre),
            home=near(c["home"], centre),
        )
        candidates.append(c)
    return {"booking": booking, "candidates": candidates}


def grounded_match(draw: st.DrawFn, body: dict[str, Any]) -> dict[str, Any]:
    city = draw(st.sampled_from(CITY_CHOICES))
    centre = CENTRES[city]
    n_b = draw(st.integers(1, MAX_BOOKINGS))
    n_d = draw(st.integers(1, MAX_CANDIDATES))
    ids = draw(driver_ids(n_d))
    bookings = []
    for i in range(n_b):
        b = dict(body["bookings"][i % len(body["bookings"])])
        b.update(
            booking_id=f"b-{i}",
            pickup=near(b["pickup"], centre),
            dropoff=near(b["dropoff"], centre),
            requested_at=draw(request_times),
        )
        bookings.append(b)
    drivers = []
    for j, driver_id in enumerate(ids):
        d = dict(body["drivers"][j % len(body["drivers"])])
        d.update(
            driver_id=driver_id, location=near(d["location"], centre), home=near(d["home"], centre)
        )
        drivers.append(d)
    return {"city": city, "bookings": bookings, "drivers": drivers}


GROUNDERS: dict[str, Callable[[st.DrawFn, dict[str, Any]], dict[str, Any]]] = {
    "/v1/rank": grounded_rank,
    "/v1/match": grounded_match,
}

# -- one thing made wrong that only the service's own checks see ----------------------------

_FAR = {"lat": 10.0, "lng": 10.0}  # valid coordinates, thousands of km from any served city


def _first(body: dict[str, Any], key: str) -> dict[str, Any]:
    return body[key][0]


def _rank_breakers() -> dict[str, Callable[[dict[str, Any]], list[str | int]]]:
    def far_pickup(b: dict[str, Any]) -> list[str | int]:
        b["booking"]["pickup"] = dict(_FAR)
        return ["booking", "pickup"]

    def far_home(b: dict[str, Any]) -> list[str | int]:
        _first(b, "candidates")["home"] = dict(_FAR)
        return ["candidates", 0, "home"]

    def duplicate(b: dict[str, Any]) -> list[str | int]:
        b["candidates"].append({**_first(b, "candidates")})
        return ["candidates", len(b["candidates"]) - 1, "driver_id"]

    def too_many(b: dict[str, Any]) -> list[str | int]:
        c = _first(b, "candidates")
        b["candidates"] = [{**c, "driver_id": f"x-{i}"} for i in range(201)]
        return ["candidates"]

    def old(b: dict[str, Any]) -> list[str | int]:
        b["booking"]["requested_at"] = "1999-12-31T23:00:00+07:00"
        return ["booking", "requested_at"]

    return {
        "far pickup": far_pickup,
        "far home": far_home,
        "duplicate driver": duplicate,
        "too many candidates": too_many,
        "year before 2000": old,
    }


def _match_breakers() -> dict[str, Callable[[dict[str, Any]], list[str | int]]]:
    def far_dropoff(b: dict[str, Any]) -> list[str | int]:
        _first(b, "bookings")["dropoff"] = dict(_FAR)
        return ["bookings", 0, "dropoff"]

    def far_driver(b: dict[str, Any]) -> list[str | int]:
        _first(b, "drivers")["location"] = dict(_FAR)
        return ["drivers", 0, "location"]

    def duplicate_booking(b: dict[str, Any]) -> list[str | int]:
        b["bookings"].append({**_first(b, "bookings")})
        return ["bookings", len(b["bookings"]) - 1, "booking_id"]

    def duplicate_driver(b: dict[str, Any]) -> list[str | int]:
        b["drivers"].append({**_first(b, "drivers")})
        return ["drivers", len(b["drivers"]) - 1, "driver_id"]

    def too_many_bookings(b: dict[str, Any]) -> list[str | int]:
        first = _first(b, "bookings")
        b["bookings"] = [{**first, "booking_id": f"x-{i}"} for i in range(51)]
        return ["bookings"]

    return {
        "far dropoff": far_dropoff,
        "far driver": far_driver,
        "duplicate booking": duplicate_booking,
        "duplicate driver": duplicate_driver,
        "too many bookings": too_many_bookings,
    }


BREAKERS = {"/v1/rank": _rank_breakers(), "/v1/match": _match_breakers()}

# -- what a 200 must say -------------------------------------------------------------------


def check_rank_answer(reg: Registered, body: dict[str, Any], out: dict[str, Any]) -> None:
    city = body["booking"]["city"]
    assert city in SERVED, f"200 for {city}, which has no model"
    assert out["fallback"] is False and out["model"] == reg.name(city)
    assert out["version"] == reg.versions[city][0] and out["score_kind"] == "probability"
    ranked = out["candidates"]
    assert sorted(c["driver_id"] for c in ranked) == sorted(
        c["driver_id"] for c in body["candidates"]
    )
    assert [c["rank"] for c in ranked] == list(range(1, len(ranked) + 1))
    scores = [c["score"] for c in ranked]
    assert all(s is not None and 0.0 <= s <= 1.0 for s in scores), scores
    assert scores == sorted(scores, reverse=True)
    assert all(math.isfinite(c["eta_seconds"]) and c["eta_seconds"] >= 0 for c in ranked)


def check_match_answer(reg: Registered, body: dict[str, Any], out: dict[str, Any]) -> None:
    city = body["city"]
    assert city in SERVED, f"200 for {city}, which has no model"
    assert out["model"] == reg.name(city) and out["version"] == reg.versions[city][0]
    assignments = out["assignments"]
    assert [a["booking_id"] for a in assignments] == [b["booking_id"] for b in body["bookings"]]
    assigned = [a["driver_id"] for a in assignments if a["driver_id"] is not None]
    pool = {d["driver_id"] for d in body["drivers"]}
    assert len(assigned) == len(set(assigned)) and set(assigned) <= pool
    assert len(assigned) == min(len(body["bookings"]), len(body["drivers"]))
    scores = [a["score"] for a in assignments if a["driver_id"] is not None]
    assert all(0.0 <= s <= 1.0 for s in scores), scores
    assert out["total_score"] == pytest.approx(sum(scores), abs=1e-9)


ANSWER_CHECKS = {"/v1/rank": check_rank_answer, "/v1/match": check_match_answer}

# -- the run ---------------------------------------------------------------------------------


def _examples(n: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def test_no_server_errors_and_scoring_is_reached(
    api_schema: schemathesis.schemas.BaseSchema, registered: Registered
) -> None:
    """Every operation with generated bodies, invalid ones, and bodies grounded in the served
    cities: never a 5xx, answers that conform to the documented schema, invalid data refused,
    and enough 200 answers from /v1/rank and /v1/match that scoring is known to be exercised."""
    operations = {result.ok().path: result.ok() for result in api_schema.get_all_operations()}
    assert set(operations) >= {"/v1/rank", "/v1/match", "/readyz", "/metrics"}
    calls: Counter[tuple[str, str, int]] = Counter()
    checks = [not_a_server_error, response_schema_conformance]

    def record(path: str, kind: str, case: schemathesis.Case, extra: list[Any]) -> Any:
        response = case.call_and_validate(checks=checks + extra)
        calls[path, kind, response.status_code] += 1
        return response

    def exercise(path: str, operation: Any) -> None:
        @given(case=operation.as_strategy())
        @_examples(EXAMPLES["generated"] if path in GROUNDERS else 5)
        def generated(case: schemathesis.Case) -> None:
            record(path, "generated", case, [])

        generated()
        if path not in GROUNDERS:  # no body: nothing to make invalid or to ground
            return

        @given(case=operation.as_strategy(GenerationMode.NEGATIVE))
        @_examples(EXAMPLES["invalid"])
        def invalid(case: schemathesis.Case) -> None:
            status = record(path, "invalid", case, [negative_data_rejection]).status_code
            assert 400 <= status < 500, status

        invalid()

        @given(case=operation.as_strategy(), data=st.data())
        @_examples(EXAMPLES["grounded"])
        def grounded(case: schemathesis.Case, data: st.DataObject) -> None:
            case.body = GROUNDERS[path](data.draw, case.body)
            response = record(path, "grounded", case, [])
            if response.status_code == 200:
                ANSWER_CHECKS[path](registered, case.body, response.json())
            else:  # only a city without a model may refuse it
                assert response.status_code == 404, (response.status_code, response.text[:300])
                assert response.json()["error"]["code"] == "no_production_model"

        grounded()

        @given(case=operation.as_strategy(), data=st.data())
        @_examples(EXAMPLES["grounded_invalid"])
        def grounded_invalid(case: schemathesis.Case, data: st.DataObject) -> None:
            body = GROUNDERS[path](data.draw, case.body)
            if path == "/v1/rank":
                body["booking"]["city"] = data.draw(st.sampled_from(sorted(SERVED)))
            else:
                body["city"] = data.draw(st.sampled_from(sorted(SERVED)))
            name = data.draw(st.sampled_from(sorted(BREAKERS[path])))
            loc = BREAKERS[path][name](body)
            case.body = body
            response = record(path, "grounded_invalid", case, [])
            assert response.status_code == 422, (name, response.text[:300])
            assert loc in [d["loc"] for d in response.json()["error"]["details"]], name

        grounded_invalid()

    for path, operation in operations.items():
        exercise(path, operation)
    summary = dict(sorted(calls.items()))
    assert sum(calls.values()) >= 2 * len(operations), summary
    assert all(status < 500 for _, _, status in calls), summary
    for path in GROUNDERS:
        ok = sum(n for (p, _, status), n in calls.items() if p == path and status == 200)
        assert ok >= MIN_OK, f"{path}: only {ok} answers of 200 (floor {MIN_OK}): {summary}"
