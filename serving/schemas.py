"""The wire contract of the scoring service (request and response bodies).

Requests are decoded once with ``model_validate_json``; responses are written with msgspec.
Both are documented in the OpenAPI schema (``/openapi.json``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

Latitude = Annotated[float, Field(ge=-90.0, le=90.0, allow_inf_nan=False)]
Longitude = Annotated[float, Field(ge=-180.0, le=180.0, allow_inf_nan=False)]
Identifier = Annotated[str, Field(min_length=1, max_length=128)]
CityId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")]
FIRST_YEAR, LAST_YEAR = 2000, 2100


def _plausible_year(value: datetime) -> datetime:
    if not FIRST_YEAR <= value.year <= LAST_YEAR:
        raise ValueError(f"year must be within {FIRST_YEAR}-{LAST_YEAR}")
    return value


RequestTime = Annotated[
    AwareDatetime,
    AfterValidator(_plausible_year),
    Field(description="ISO 8601 with a UTC offset, e.g. 2026-11-27T08:15:00+07:00."),
]
# A hard cap so a body cannot ask for millions of rows; the configured maximum is lower.
HARD_MAX_CANDIDATES = 10_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Point(_Strict):
    """A WGS84 position in degrees."""

    lat: Latitude
    lng: Longitude


class Booking(_Strict):
    """The booking to find a driver for."""

    booking_id: Identifier
    city: CityId = Field(description="City id, e.g. 'jakarta' (see `matchmaking world cities`).")
    pickup: Point
    dropoff: Point
    requested_at: RequestTime
    trip_km: Annotated[float, Field(gt=0.0, le=500.0, allow_inf_nan=False)] | None = Field(
        default=None, description="Road km; estimated from the coordinates when absent."
    )
    fare: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | None = Field(
        default=None, description="Quoted fare (local currency); the city tariff when absent."
    )


class Candidate(_Strict):
    """A driver that could take the booking."""

    driver_id: Identifier
    location: Point
    rating: Annotated[float, Field(ge=1.0, le=5.0, allow_inf_nan=False)]
    home: Point
    eta_seconds: Annotated[float, Field(ge=0.0, le=14_400.0, allow_inf_nan=False)] | None = Field(
        default=None, description="Dispatcher's pickup ETA; estimated when absent."
    )


class RankRequest(_Strict):
    """``POST /v1/rank``: one booking and its candidate drivers."""

    booking: Booking
    candidates: Annotated[list[Candidate], Field(min_length=1, max_length=HARD_MAX_CANDIDATES)]


class MatchBooking(_Strict):
    """A booking of ``POST /v1/match`` (its city is the request's)."""

    booking_id: Identifier
    pickup: Point
    dropoff: Point
    requested_at: RequestTime
    trip_km: Annotated[float, Field(gt=0.0, le=500.0, allow_inf_nan=False)] | None = None
    fare: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | None = None


class MatchDriver(_Strict):
    """A free driver of the pool (the ETA to each pickup is estimated)."""

    driver_id: Identifier
    location: Point
    rating: Annotated[float, Field(ge=1.0, le=5.0, allow_inf_nan=False)]
    home: Point


class MatchRequest(_Strict):
    """``POST /v1/match``: open bookings and a pool of free drivers in one city."""

    city: CityId
    bookings: Annotated[list[MatchBooking], Field(min_length=1, max_length=HARD_MAX_CANDIDATES)]
    drivers: Annotated[list[MatchDriver], Field(min_length=1, max_length=HARD_MAX_CANDIDATES)]


class RankedCandidate(BaseModel):
    driver_id: str
    rank: int = Field(description="1 = offer first.")
    score: float | None = Field(
        description="Model score (probability of acceptance for binary models); null in fallback."
    )
    eta_seconds: float = Field(description="The ETA used (given or estimated).")


class RankResponse(BaseModel):
    booking_id: str
    city: str
    model: str | None = Field(description="Registered model name; null in fallback.")
    version: str | None = Field(description="Registered model version; null in fallback.")
    score_kind: Literal["probability", "rank_score", "nearest_eta"]
    fallback: bool = Field(description="True when the nearest-ETA fallback answered.")
    candidates: list[RankedCandidate] = Field(description="Best first.")


class Assignment(BaseModel):
    booking_id: str
    driver_id: str | None = Field(description="null when no driver is left for this booking.")
    score: float | None


class MatchResponse(BaseModel):
    city: str
    model: str
    version: str
    score_kind: Literal["probability", "rank_score"]
    total_score: float = Field(description="Sum of the assigned pairs' scores (maximised).")
    assignments: list[Assignment]


class ErrorDetail(BaseModel):
    loc: list[str | int] = Field(description="Where in the body, e.g. ['candidates', 2, 'rating'].")
    msg: str
    type: str


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
