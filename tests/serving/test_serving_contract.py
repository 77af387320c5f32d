"""The wire contract at its edges, against a real uvicorn server: which content types are
accepted, which ids are refused, and that docs/serving.md shows what the service answers.

``POST /v1/rank`` is served by a pure ASGI hot path in front of FastAPI; every case runs
through both (``served``: the app as built, and the same app with the hot path removed).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.live import ServerThread, rank_body
from support.registered import Registered, serve_settings

from matchmaking.features.geo import EARTH_RADIUS_KM
from matchmaking.markets import get_market
from serving.app import HotPath, create_app

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"


@pytest.fixture(scope="module", params=["hot-path", "fastapi-route"])
def served(request: pytest.FixtureRequest, registered: Registered) -> Iterator[ServerThread]:
    """The service on uvicorn, with its ASGI hot path for /v1/rank, then without it."""
    app = create_app(serve_settings(registered, access_log=False))
    if request.param == "fastapi-route":
        # The middleware stack is built on the first request: before it, the hot path can go.
        app.user_middleware = [m for m in app.user_middleware if m.cls is not HotPath]
    with ServerThread(app) as server:
        yield server


def match_body(n_bookings: int = 2, n_drivers: int = 3) -> dict[str, Any]:
    base = rank_body(n=n_drivers, with_eta=False)
    booking = {k: v for k, v in base["booking"].items() if k != "city"}
    return {
        "city": "jakarta",
        "bookings": [{**booking, "booking_id": f"b-{i}"} for i in range(n_bookings)],
        "drivers": [{k: v for k, v in c.items() if k != "eta_seconds"} for c in base["candidates"]],
    }


def _assert_error_shape(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details", "request_id"}
    assert body["error"]["code"] == code
    assert body["error"]["request_id"] == r.headers["x-request-id"]
    return dict(body["error"])


# ---- content types --------------------------------------------------------------------------

REFUSED = [
    "text/plain",
    "text/plain; charset=utf-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "application/xml",
    "text/json",
    "application/jsonx",
    "application/json; charset=latin-1",
    "application/merge-patch+json",
    "application/vnd.api+json",
    "",
]
ACCEPTED = [
    "application/json",
    "application/json; charset=utf-8",
    "Application/JSON; Charset=UTF-8",
    'application/json;charset="utf-8"',
]


@pytest.mark.parametrize("path", ["/v1/rank", "/v1/match"])
@pytest.mark.parametrize("content_type", REFUSED)
def test_a_body_not_declared_as_json_is_415(
    served: ServerThread, path: str, content_type: str
) -> None:
    """The body is valid JSON: only the declared type is wrong, and that alone refuses it."""
    body = json.dumps(rank_body() if path == "/v1/rank" else match_body()).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    with httpx.Client(base_url=served.url) as c:
        r = c.post(path, content=body, headers=headers)
    error = _assert_error_shape(r, 415, "unsupported_media_type")
    assert "Content-Type: application/json" in error["message"]
    assert (repr(content_type) if content_type else "no Content-Type") in error["message"]
    assert error["details"] == []


@pytest.mark.parametrize("path", ["/v1/rank", "/v1/match"])
def test_form_and_multipart_bodies_are_415(served: ServerThread, path: str) -> None:
    """What a browser form or `curl -d`/`-F` without a JSON header sends."""
    with httpx.Client(base_url=served.url) as c:
        form = c.post(path, data={"booking": json.dumps(rank_body()["booking"])})
        multipart = c.post(path, files={"body": ("body.json", json.dumps(rank_body()))})
    _assert_error_shape(form, 415, "unsupported_media_type")
    _assert_error_shape(multipart, 415, "unsupported_media_type")


@pytest.mark.parametrize("path", ["/v1/rank", "/v1/match"])
@pytest.mark.parametrize("content_type", ACCEPTED)
def test_json_with_or_without_charset_is_accepted(
    served: ServerThread, path: str, content_type: str
) -> None:
    body = json.dumps(rank_body() if path == "/v1/rank" else match_body()).encode()
    with httpx.Client(base_url=served.url) as c:
        r = c.post(path, content=body, headers={"Content-Type": content_type})
    assert r.status_code == 200, r.text


def test_a_wrong_content_type_is_refused_before_the_body_is_read(served: ServerThread) -> None:
    """An oversized text body gets 415 (what to fix first), not 413 or 422."""
    with httpx.Client(base_url=served.url) as c:
        r = c.post("/v1/rank", content=b"x" * 300_000, headers={"Content-Type": "text/plain"})
    _assert_error_shape(r, 415, "unsupported_media_type")


def test_the_schema_documents_415(served: ServerThread) -> None:
    with httpx.Client(base_url=served.url) as c:
        paths = c.get("/openapi.json").json()["paths"]
    for path in ("/v1/rank", "/v1/match"):
        assert "415" in paths[path]["post"]["responses"]


# ---- control characters in ids --------------------------------------------------------------

CONTROL = ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9f"]


def _set(body: dict[str, Any], loc: list[Any], value: str) -> dict[str, Any]:
    out = copy.deepcopy(body)
    target = out
    for key in loc[:-1]:
        target = target[key]
    target[loc[-1]] = value
    return out


def _control_detail(error: dict[str, Any], loc: list[Any], char: str) -> None:
    assert error["details"] == [
        {
            "loc": loc,
            "msg": f"contains the control character U+{ord(char):04X} at position 1; ids must "
            "not contain control characters (U+0000-U+001F, U+007F-U+009F)",
            "type": "control_character",
        }
    ]


@pytest.mark.parametrize("char", CONTROL, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize(
    ("path", "loc"),
    [
        ("/v1/rank", ["booking", "booking_id"]),
        ("/v1/rank", ["candidates", 1, "driver_id"]),
        ("/v1/match", ["bookings", 1, "booking_id"]),
        ("/v1/match", ["drivers", 2, "driver_id"]),
    ],
)
def test_a_control_character_in_an_id_is_422_naming_the_field(
    served: ServerThread, path: str, loc: list[Any], char: str
) -> None:
    base = rank_body() if path == "/v1/rank" else match_body()
    # Also at the end of the id: a trailing newline is what an anchored regex lets through.
    value = f"d{char}" if char == "\n" else f"d{char}x"
    with httpx.Client(base_url=served.url) as c:
        r = c.post(path, json=_set(base, loc, value))
    _control_detail(_assert_error_shape(r, 422, "invalid_request"), loc, char)


@pytest.mark.parametrize(
    ("path", "loc"), [("/v1/rank", ["booking", "city"]), ("/v1/match", ["city"])]
)
def test_a_city_with_a_trailing_newline_is_422_not_an_unknown_city(
    served: ServerThread, path: str, loc: list[Any]
) -> None:
    """The city's schema pattern ends in $, which lets 'jakarta\\n' through a Python regex."""
    base = rank_body() if path == "/v1/rank" else match_body()
    with httpx.Client(base_url=served.url) as c:
        r = c.post(path, json=_set(base, loc, "jakarta\n"))
    error = _assert_error_shape(r, 422, "invalid_request")
    assert error["details"][0]["loc"] == loc
    assert error["details"][0]["type"] == "control_character"
    assert "U+000A at position 7" in error["details"][0]["msg"]


def test_every_id_with_a_control_character_is_named(served: ServerThread) -> None:
    body = _set(rank_body(), ["booking", "booking_id"], "b\x00")
    body = _set(body, ["candidates", 3, "driver_id"], "d\x7f")
    with httpx.Client(base_url=served.url) as c:
        r = c.post("/v1/rank", json=body)
    error = _assert_error_shape(r, 422, "invalid_request")
    assert [d["loc"] for d in error["details"]] == [
        ["booking", "booking_id"],
        ["candidates", 3, "driver_id"],
    ]


@pytest.mark.parametrize("value", ["d-\u00a0nbsp", "d-é", "司机-1", "d-🙂", "d-\u200b"])
def test_printable_unicode_ids_are_accepted_and_echoed(served: ServerThread, value: str) -> None:
    """Only control characters are refused: ids stay free text otherwise."""
    body = _set(rank_body(), ["candidates", 1, "driver_id"], value)
    body = _set(body, ["booking", "booking_id"], value)
    with httpx.Client(base_url=served.url) as c:
        r = c.post("/v1/rank", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["booking_id"] == value
    assert value in [x["driver_id"] for x in r.json()["candidates"]]


def test_the_schema_publishes_the_id_rule(served: ServerThread) -> None:
    with httpx.Client(base_url=served.url) as c:
        schemas = c.get("/openapi.json").json()["components"]["schemas"]
    pattern = schemas["Candidate"]["properties"]["driver_id"]["pattern"]
    # ECMA-262 semantics (JSON Schema): Python's re reads the \\u escapes the same way.
    assert re.fullmatch(pattern, "d-1")
    assert not any(re.fullmatch(pattern, f"d{c}") for c in CONTROL)


# ---- the documented samples are real answers ------------------------------------------------


def _doc_blocks() -> list[tuple[str, str]]:
    """(language, text) of each fenced block of docs/serving.md."""
    return re.findall(r"^```(\w*)\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def documented_rank_exchange() -> tuple[dict[str, Any], dict[str, Any]]:
    """The curl request of the /v1/rank section and the answer shown under it."""
    blocks = _doc_blocks()
    i = next(i for i, (lang, text) in enumerate(blocks) if "curl" in text and "/v1/rank" in text)
    request = json.loads(re.search(r"-d '(.*)'", blocks[i][1], flags=re.S).group(1))  # type: ignore[union-attr]
    assert blocks[i + 1][0] == "json", "the sample answer must follow the curl request"
    return request, json.loads(blocks[i + 1][1])


def documented_error() -> dict[str, Any]:
    text = next(t for lang, t in _doc_blocks() if lang == "json" and '"invalid_request"' in t)
    return dict(json.loads(text))


def _keys(value: Any) -> Any:
    """The shape of a JSON value: keys in order, and the types of the leaves."""
    if isinstance(value, dict):
        return {k: _keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_keys(v) for v in value]
    return (
        "number"
        if isinstance(value, int | float) and not isinstance(value, bool)
        else type(value).__name__
    )


def test_the_documented_rank_answer_is_what_the_service_answers(
    served: ServerThread, registered: Registered
) -> None:
    """docs/serving.md's curl request, sent as written: its sample answer has the real answer's
    keys, order and types, and the values that do not depend on the model version are the
    real ones (ids, the given and the estimated ETAs, ranks). Scores, the version and the
    order follow the model, so only their kind is checked."""
    request, sample = documented_rank_exchange()
    with httpx.Client(base_url=served.url) as c:
        r = c.post("/v1/rank", json=request)
    assert r.status_code == 200, r.text
    real = r.json()
    hint = f"real answer, to paste into {DOC.name}:\n{json.dumps(real)}"
    assert _keys(sample) == _keys(real), hint
    for key in ("booking_id", "city", "score_kind", "fallback"):
        assert sample[key] == real[key], hint
    assert sample["model"] == real["model"].replace(registered.prefix, "matchmaking", 1), hint
    assert [c["rank"] for c in sample["candidates"]] == list(
        range(1, len(request["candidates"]) + 1)
    )
    real_eta = {c["driver_id"]: c["eta_seconds"] for c in real["candidates"]}
    sample_eta = {c["driver_id"]: c["eta_seconds"] for c in sample["candidates"]}
    assert sample_eta.keys() == real_eta.keys(), hint
    for driver, eta in sample_eta.items():
        assert eta == round(real_eta[driver], 1), hint
    for c in sample["candidates"]:
        assert 0.0 < c["score"] < 1.0
    scores = [c["score"] for c in sample["candidates"]]
    assert scores == sorted(scores, reverse=True), "the sample must be best first"


def test_the_documented_error_is_what_the_service_answers(served: ServerThread) -> None:
    """The /v1/rank error sample (a duplicate driver, a home out of the city): same shape,
    same messages as a real answer to such a body."""
    sample = documented_error()
    body = rank_body(n=5)
    wanted = {tuple(d["loc"]): d for d in sample["error"]["details"]}
    duplicate = re.search(r"'(.*)'", wanted[("candidates", 2, "driver_id")]["msg"]).group(1)  # type: ignore[union-attr]
    assert duplicate in [c["driver_id"] for c in body["candidates"][:2]]
    body = _set(body, ["candidates", 2, "driver_id"], duplicate)
    km = float(re.search(r"is ([\d.]+) km", wanted[("candidates", 4, "home")]["msg"]).group(1))  # type: ignore[union-attr]
    centre = get_market("jakarta")
    # Due north of the centre: the great-circle distance is the latitude difference.
    lat = centre.lat + math.degrees(km / EARTH_RADIUS_KM)
    body["candidates"][4]["home"] = {"lat": lat, "lng": centre.lng}
    with httpx.Client(base_url=served.url) as c:
        r = c.post("/v1/rank", json=body)
    real = r.json()
    assert r.status_code == 422
    assert _keys(sample) == _keys(real), json.dumps(real)
    assert sample["error"]["code"] == real["error"]["code"]
    assert sample["error"]["message"] == real["error"]["message"]
    assert sample["error"]["details"] == real["error"]["details"], json.dumps(real)
