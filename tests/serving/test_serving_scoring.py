"""The scoring steps without HTTP: a decoded request in, a response body out."""

from __future__ import annotations

import json

import pytest

from matchmaking.errors import UnknownCityError
from serving import scoring
from serving.errors import FieldErrors
from serving.schemas import decode_rank
from serving.settings import ServeSettings

JAKARTA = {"lat": -6.2, "lng": 106.85}


def rank_request(n: int = 3, city: str = "jakarta", far: bool = False) -> bytes:
    point = {"lat": JAKARTA["lat"] + (5.0 if far else 0.0), "lng": JAKARTA["lng"]}
    body = {
        "booking": {
            "booking_id": "b-1",
            "city": city,
            "requested_at": "2026-11-27T08:15:00+07:00",
            "pickup": point,
            "dropoff": {"lat": -6.25, "lng": 106.8},
        },
        "candidates": [
            {
                "driver_id": f"d-{i}",
                "location": {"lat": -6.2 + 0.01 * i, "lng": 106.85},
                "rating": 4.5,
                "home": {"lat": -6.3, "lng": 106.9},
                **({"eta_seconds": 600.0 - 100 * i} if i % 2 else {}),
            }
            for i in range(n)
        ],
    }
    return json.dumps(body).encode()


def test_the_fallback_ranks_by_eta_without_a_model_or_a_request() -> None:
    job = scoring.rank_job(decode_rank(rank_request(4)), ServeSettings())
    body = scoring.rank_nearest_eta(job)
    assert body["fallback"] is True and body["score_kind"] == "nearest_eta"
    etas = [c["eta_seconds"] for c in body["candidates"]]
    assert etas == sorted(etas) and [c["rank"] for c in body["candidates"]] == [1, 2, 3, 4]
    assert all(c["score"] is None for c in body["candidates"])


def test_checks_raise_package_errors_naming_the_fields() -> None:
    settings = ServeSettings(max_candidates=2)
    with pytest.raises(FieldErrors) as info:
        scoring.rank_job(decode_rank(rank_request(3, far=True)), settings)
    locs = [d["loc"] for d in info.value.details]
    assert ["candidates"] in locs and ["booking", "pickup"] in locs
    with pytest.raises(UnknownCityError):
        scoring.rank_job(decode_rank(rank_request(city="atlantis")), settings)
