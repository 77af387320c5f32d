"""Service pieces without a server: settings, request decoding, the error table, JSON logs."""

from __future__ import annotations

import json
import logging

import pytest

from matchmaking.errors import (
    ConfigError,
    InputError,
    ModelNotFoundError,
    TrackingError,
    UnknownCityError,
)
from serving.errors import status_for
from serving.logs import JsonFormatter, request_id_var
from serving.schemas import BodyError, decode_match, decode_rank
from serving.settings import ServeSettings

BODY = {
    "booking": {
        "booking_id": "b-1",
        "city": "jakarta",
        "pickup": {"lat": -6.2, "lng": 106.8},
        "dropoff": {"lat": -6.25, "lng": 106.85},
        "requested_at": "2026-11-27T08:15:00+07:00",
    },
    "candidates": [
        {"driver_id": "d-1", "location": {"lat": -6.19, "lng": 106.8}, "rating": 4.5,
         "home": {"lat": -6.3, "lng": 106.9}},
    ],
}  # fmt: skip


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATCHMAKING_SERVE_HOT_CITIES", "jakarta, bangkok,")
    monkeypatch.setenv("MATCHMAKING_SERVE_MAX_MODELS", "3")
    monkeypatch.setenv("MATCHMAKING_SERVE_AUTH_TOKEN", "s3cret-token")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://registry:5000")
    s = ServeSettings()
    assert s.hot_cities == ["jakarta", "bangkok"] and s.max_models == 3
    assert s.max_candidates == 200 and s.fallback_nearest_eta is False
    assert s.auth_token is not None and s.auth_token.get_secret_value() == "s3cret-token"
    assert "s3cret-token" not in repr(s)  # the token never shows in logs
    assert s.resolved_tracking_uri() == "http://registry:5000"
    assert s.resolved_model_name_prefix() == "matchmaking"
    monkeypatch.setenv("MATCHMAKING_SERVE_TRACKING_URI", "http://other:5000")
    assert ServeSettings().resolved_tracking_uri() == "http://other:5000"


def test_decode_rank_reads_a_valid_body() -> None:
    req = decode_rank(json.dumps(BODY).encode())
    assert req.booking.city == "jakarta" and req.candidates[0].eta_seconds is None
    assert req.booking.requested_at.utcoffset() is not None


@pytest.mark.parametrize(
    ("change", "loc", "kind"),
    [
        (lambda b: b["candidates"][0].update(rating=6), ["candidates", 0, "rating"], "invalid"),
        (lambda b: b["booking"]["pickup"].pop("lat"), ["booking", "pickup", "lat"], "missing"),
        (lambda b: b["booking"].update(extra=1), ["booking", "extra"], "extra"),
        (lambda b: b.update(candidates=[]), ["candidates"], "invalid"),
        (
            lambda b: b["booking"].update(requested_at="2026-11-27T08:15:00"),
            ["booking", "requested_at"],
            "invalid",
        ),
        (
            lambda b: b["booking"].update(requested_at="1999-12-31T08:15:00+07:00"),
            ["booking", "requested_at"],
            "invalid",
        ),
    ],
)
def test_decode_errors_name_the_field(change: object, loc: list[object], kind: str) -> None:
    body = json.loads(json.dumps(BODY))
    change(body)  # type: ignore[operator]
    with pytest.raises(BodyError) as info:
        decode_rank(json.dumps(body).encode())
    assert info.value.details[0]["loc"] == loc
    assert info.value.details[0]["type"] == kind


def test_malformed_json_is_a_body_error() -> None:
    with pytest.raises(BodyError) as info:
        decode_match(b'{"city": "jakarta", ')
    assert info.value.details[0]["type"] == "json_invalid"


def test_one_table_maps_error_families_to_statuses() -> None:
    assert status_for(UnknownCityError("x")) == (404, "unknown_city")
    assert status_for(ModelNotFoundError("x")) == (404, "no_production_model")
    assert status_for(InputError("x")) == (422, "invalid_request")
    assert status_for(TrackingError("x")) == (503, "registry_unavailable")
    assert status_for(ConfigError("x"))[0] == 500


def test_json_log_lines_carry_the_request_id() -> None:
    record = logging.LogRecord("serving", logging.INFO, __file__, 1, "ranked %d", (3,), None)
    record.city = "jakarta"
    token = request_id_var.set("req-7")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["msg"] == "ranked 3" and line["request_id"] == "req-7"
    assert line["city"] == "jakarta" and line["level"] == "INFO"


def test_a_failed_load_is_not_retried_by_every_request(tmp_path: object) -> None:
    """A city without a Production model (of its own, or of its country) costs one registry
    call for each of the two per TTL, not per request."""
    from serving.metrics import Metrics
    from serving.registry_watch import ModelStore

    store = ModelStore(
        ServeSettings(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", poll_interval_s=60),
        Metrics(),
    )
    calls = []
    resolve = store._resolve

    def counting(name: str):  # type: ignore[no-untyped-def]
        calls.append(name)
        return resolve(name)

    store._resolve = counting  # type: ignore[method-assign]
    for _ in range(3):
        with pytest.raises(ModelNotFoundError, match="nor of its country ID"):
            store.load("jakarta")
    tried = ["matchmaking-jakarta", "matchmaking-country-id"]
    assert calls == tried
    store._failures["jakarta"] = (0.0, store._failures["jakarta"][1])  # the TTL ran out
    with pytest.raises(ModelNotFoundError):
        store.load("jakarta")
    assert calls == tried + tried


@pytest.mark.parametrize(
    ("status", "sample", "logged"),
    [(200, 0.0, False), (200, 1.0, True), (404, 0.0, True), (500, 0.0, True)],
)
def test_access_log_keeps_every_error_and_a_sample_of_successes(
    status: int, sample: float, logged: bool, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    from serving.logs import RequestContextMiddleware

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive():  # type: ignore[no-untyped-def]
        return {"type": "http.request", "body": b""}

    sent: list[dict[str, object]] = []

    async def send(message):  # type: ignore[no-untyped-def]
        sent.append(message)

    middleware = RequestContextMiddleware(app, sample=sample, slow_ms=1e9)
    scope = {"type": "http", "method": "POST", "path": "/v1/rank", "headers": []}
    with caplog.at_level(logging.INFO, logger="serving.logs"):
        asyncio.run(middleware(scope, receive, send))
    assert any(h == b"x-request-id" for h, _ in sent[0]["headers"])  # type: ignore[union-attr]
    assert (f"POST /v1/rank {status}" in caplog.text) is logged


def test_ranking_is_best_first_and_ties_keep_the_request_order() -> None:
    import numpy as np

    from serving.scoring import ranking

    out = ranking(["a", "b", "c", "d"], np.array([0.5, 0.9, 0.5, 0.1]), np.arange(4.0))
    assert [(c["driver_id"], c["rank"]) for c in out] == [("b", 1), ("a", 2), ("c", 3), ("d", 4)]
    assert out[0]["score"] == 0.9 and out[0]["eta_seconds"] == 1.0
