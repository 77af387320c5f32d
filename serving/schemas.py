"""The wire contract of the scoring service (request and response bodies).

Requests are msgspec Structs, decoded once per request straight from the body bytes
(``decode_rank`` / ``decode_match``: types, ranges and unknown fields checked on the way);
their OpenAPI schema is generated from the same Structs. Responses are written with msgspec
and documented by the pydantic models below.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from pydantic import BaseModel, Field

from matchmaking.schema import OUTCOME_STAGES

Latitude = Annotated[float, msgspec.Meta(ge=-90.0, le=90.0, description="Degrees.")]
Longitude = Annotated[float, msgspec.Meta(ge=-180.0, le=180.0, description="Degrees.")]
# Control characters (Unicode category Cc: C0, DEL, C1) are refused in ids: they end up in logs,
# dispatch records and downstream systems. Checked after decoding (``_bad_ids``) because
# msgspec's ``pattern`` is a Python ``re.search``, whose ``$`` lets a trailing newline through;
# the pattern is published in the schema for clients.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")
Identifier = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=128,
        description="1-128 characters, no control characters (U+0000-U+001F, U+007F-U+009F).",
        extra_json_schema={"pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"},
    ),
]
CityId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[a-z0-9-]+$",
        description="City id, e.g. 'jakarta' (see `matchmaking world cities`).",
    ),
]
RequestTime = Annotated[
    datetime,
    msgspec.Meta(
        tz=True, description="ISO 8601 with a UTC offset, e.g. 2026-11-27T08:15:00+07:00."
    ),
]
Rating = Annotated[float, msgspec.Meta(ge=1.0, le=5.0)]
TripKm = Annotated[
    float, msgspec.Meta(gt=0.0, le=500.0, description="Road km; estimated when absent.")
]
Fare = Annotated[
    float,
    msgspec.Meta(
        gt=0.0, le=1e9, description="Quoted fare (local currency); the city tariff when absent."
    ),
]
Eta = Annotated[
    float,
    msgspec.Meta(
        ge=0.0, le=14_400.0, description="Dispatcher's pickup ETA; estimated when absent."
    ),
]
FIRST_YEAR, LAST_YEAR = 2000, 2100
# A hard cap so a body cannot ask for millions of rows; the configured maximum is lower.
HARD_MAX_CANDIDATES = 10_000


class Point(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A WGS84 position in degrees."""

    lat: Latitude
    lng: Longitude


class Booking(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The booking to find a driver for."""

    booking_id: Identifier
    city: CityId
    pickup: Point
    dropoff: Point
    requested_at: RequestTime
    trip_km: TripKm | None = None
    fare: Fare | None = None


class Candidate(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A driver that could take the booking."""

    driver_id: Identifier
    location: Point
    rating: Rating
    home: Point
    eta_seconds: Eta | None = None


class RankRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``POST /v1/rank``: one booking and its candidate drivers."""

    booking: Booking
    candidates: Annotated[
        list[Candidate], msgspec.Meta(min_length=1, max_length=HARD_MAX_CANDIDATES)
    ]


class MatchBooking(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A booking of ``POST /v1/match`` (its city is the request's)."""

    booking_id: Identifier
    pickup: Point
    dropoff: Point
    requested_at: RequestTime
    trip_km: TripKm | None = None
    fare: Fare | None = None


class MatchDriver(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A free driver of the pool (the ETA to each pickup is estimated)."""

    driver_id: Identifier
    location: Point
    rating: Rating
    home: Point


class MatchRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``POST /v1/match``: open bookings and a pool of free drivers in one city."""

    city: CityId
    bookings: Annotated[
        list[MatchBooking], msgspec.Meta(min_length=1, max_length=HARD_MAX_CANDIDATES)
    ]
    drivers: Annotated[
        list[MatchDriver], msgspec.Meta(min_length=1, max_length=HARD_MAX_CANDIDATES)
    ]


#: A hard cap on outcomes per body; the configured maximum (``max_outcomes``) is lower.
HARD_MAX_OUTCOMES = 100_000
Position = Annotated[int, msgspec.Meta(ge=1, le=HARD_MAX_CANDIDATES, description="1 = first.")]


class Outcome(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What dispatch learnt of one offer: its response (stage ``offer``: accepted, declined,
    timed_out), then for an accepted offer the trip's end (stage ``trip``: completed,
    rider_cancelled). Idempotent on (booking_id, driver_id, position, stage)."""

    booking_id: Identifier
    driver_id: Identifier
    position: Position
    city: CityId
    stage: Annotated[str, msgspec.Meta(description="'offer' or 'trip'.")]
    outcome: Annotated[
        str,
        msgspec.Meta(
            description="offer: accepted, declined or timed_out; trip: completed or "
            "rider_cancelled."
        ),
    ]
    occurred_at: RequestTime
    request_id: Identifier | None = None


class OutcomesRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``POST /v1/outcomes``: a batch of offer and trip outcomes."""

    outcomes: Annotated[list[Outcome], msgspec.Meta(min_length=1, max_length=HARD_MAX_OUTCOMES)]


REQUEST_TYPES: tuple[type[msgspec.Struct], ...] = (RankRequest, MatchRequest, OutcomesRequest)
_rank_decoder = msgspec.json.Decoder(RankRequest)
_match_decoder = msgspec.json.Decoder(MatchRequest)
_outcomes_decoder = msgspec.json.Decoder(OutcomesRequest)


class BodyError(ValueError):
    """The body does not decode into the request type; ``details`` are field-level reasons."""

    def __init__(self, details: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(details)} invalid field(s)")
        self.details = details


def _loc(path: str) -> list[str | int]:
    """``$.candidates[2].rating`` -> ``["candidates", 2, "rating"]``."""
    out: list[str | int] = []
    for part in path.removeprefix("$").replace("[", ".[").split("."):
        if not part:
            continue
        out.append(int(part[1:-1]) if part.startswith("[") else part)
    return out


def _details(exc: msgspec.DecodeError) -> list[dict[str, Any]]:
    text = str(exc)
    if not isinstance(exc, msgspec.ValidationError):
        return [{"loc": [], "msg": text, "type": "json_invalid"}]
    msg, _, path = text.partition(" - at `")
    loc = _loc(path.rstrip("`")) if path else []
    # Missing and unknown fields name the field in the message, not in the path.
    for marker, kind in (("missing required field `", "missing"), ("unknown field `", "extra")):
        if marker in msg:
            loc.append(msg.split(marker, 1)[1].split("`", 1)[0])
            return [{"loc": loc, "msg": msg, "type": kind}]
    return [{"loc": loc, "msg": msg, "type": "invalid"}]


def _bad_ids(ids: list[tuple[list[str | int], str]]) -> list[dict[str, Any]]:
    """Field errors for the ids holding a control character."""
    if not CONTROL_CHARACTERS.search("".join(v for _, v in ids)):  # one scan in the common case
        return []
    out = []
    for loc, value in ids:
        found = CONTROL_CHARACTERS.search(value)
        if found:
            out.append(
                {
                    "loc": loc,
                    "msg": f"contains the control character U+{ord(found.group()):04X} at "
                    f"position {found.start()}; ids must not contain control characters "
                    "(U+0000-U+001F, U+007F-U+009F)",
                    "type": "control_character",
                }
            )
    return out


def _check(
    ids: list[tuple[list[str | int], str]], times: list[tuple[list[str | int], datetime]]
) -> None:
    """What the decoder cannot check: control characters in ids, the range of years."""
    bad = _bad_ids(ids)
    bad += [
        {"loc": loc, "msg": f"year must be within {FIRST_YEAR}-{LAST_YEAR}", "type": "invalid"}
        for loc, t in times
        if not FIRST_YEAR <= t.year <= LAST_YEAR
    ]
    if bad:
        raise BodyError(bad)


def decode_rank(body: bytes) -> RankRequest:
    """The typed ranking request.

    Raises:
        BodyError: malformed JSON, wrong types, out-of-range values, missing or unknown fields,
            control characters in an id.
    """
    try:
        req = _rank_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise BodyError(_details(exc)) from None
    ids: list[tuple[list[str | int], str]] = [
        (["booking", "booking_id"], req.booking.booking_id),
        (["booking", "city"], req.booking.city),  # its pattern's $ lets a trailing newline by
    ]
    ids += [(["candidates", i, "driver_id"], c.driver_id) for i, c in enumerate(req.candidates)]
    _check(ids, [(["booking", "requested_at"], req.booking.requested_at)])
    return req


def decode_match(body: bytes) -> MatchRequest:
    """The typed matching request (same errors as ``decode_rank``)."""
    try:
        req = _match_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise BodyError(_details(exc)) from None
    ids: list[tuple[list[str | int], str]] = [(["city"], req.city)]
    ids += [(["bookings", i, "booking_id"], b.booking_id) for i, b in enumerate(req.bookings)]
    ids += [(["drivers", i, "driver_id"], d.driver_id) for i, d in enumerate(req.drivers)]
    _check(
        ids, [(["bookings", i, "requested_at"], b.requested_at) for i, b in enumerate(req.bookings)]
    )
    return req


def decode_outcomes(body: bytes) -> OutcomesRequest:
    """The typed outcomes request (same errors as ``decode_rank``, plus a stage or outcome
    outside ``schema.OUTCOME_STAGES``)."""
    try:
        req = _outcomes_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise BodyError(_details(exc)) from None
    ids: list[tuple[list[str | int], str]] = []
    bad: list[dict[str, Any]] = []
    for i, o in enumerate(req.outcomes):
        ids += [(["outcomes", i, "booking_id"], o.booking_id)]
        ids += [(["outcomes", i, "driver_id"], o.driver_id), (["outcomes", i, "city"], o.city)]
        if o.request_id is not None:
            ids.append((["outcomes", i, "request_id"], o.request_id))
        allowed = OUTCOME_STAGES.get(o.stage)
        if allowed is None:
            stages = ", ".join(OUTCOME_STAGES)
            bad.append(
                {
                    "loc": ["outcomes", i, "stage"],
                    "msg": f"unknown stage {o.stage[:40]!r}; expected one of: {stages}",
                    "type": "enum",
                }
            )
        elif o.outcome not in allowed:
            bad.append(
                {
                    "loc": ["outcomes", i, "outcome"],
                    "msg": f"{o.outcome[:40]!r} is not an outcome of stage {o.stage!r}; "
                    f"expected one of: {', '.join(allowed)}",
                    "type": "enum",
                }
            )
    try:
        _check(
            ids,
            [(["outcomes", i, "occurred_at"], o.occurred_at) for i, o in enumerate(req.outcomes)],
        )
    except BodyError as exc:
        bad = exc.details + bad
    if bad:
        raise BodyError(bad)
    return req


def request_schemas(ref_template: str) -> dict[str, Any]:
    """JSON Schema components of the request types (for the OpenAPI document)."""
    _, components = msgspec.json.schema_components(REQUEST_TYPES, ref_template=ref_template)
    return components


class RankedCandidate(BaseModel):
    driver_id: str
    rank: int = Field(description="1 = offer first.")
    score: float | None = Field(
        description="Model score (probability of acceptance for binary models); null in fallback."
    )
    eta_seconds: float = Field(description="The ETA used (given or estimated).")
    first_propensity: float = Field(
        description="Probability that the serving policy ranks this candidate first (greedy: "
        "1 for the top candidate, 0 for the others)."
    )
    propensity: float = Field(
        description="Probability of this candidate at this rank given the candidates above it "
        "(greedy: 1)."
    )


Arm = Literal["champion", "challenger", "fallback"]
ModelScope = Literal["city", "country", "fallback"]
Policy = Literal["greedy", "plackett-luce"]


class RankResponse(BaseModel):
    request_id: str = Field(description="The X-Request-ID sent, else a new id (also a header).")
    booking_id: str
    city: str
    model: str | None = Field(description="Registered model name; null in fallback.")
    version: str | None = Field(description="Registered model version; null in fallback.")
    score_kind: Literal["probability", "rank_score", "nearest_eta"]
    fallback: bool = Field(description="True when the nearest-ETA fallback answered.")
    arm: Arm = Field(
        description="Who answered: the Production model, its challenger, or the "
        "nearest-ETA fallback."
    )
    model_scope: ModelScope = Field(
        description="'city': the city's own model scored; 'country': its country's pooled "
        "model (``model`` names it: <prefix>-country-<cc>); 'fallback': nearest ETA."
    )
    policy: Policy = Field(description="How the order was chosen (docs/serving.md#exploration).")
    temperature: float | None = Field(description="Plackett-Luce temperature; null: greedy.")
    candidates: list[RankedCandidate] = Field(description="In the served order: offer first.")


class OutcomesResponse(BaseModel):
    received: int = Field(description="Outcomes in the body.")
    accepted: int = Field(description="New outcomes, queued for the log.")
    duplicates: int = Field(description="Repeats of outcomes already reported (not stored again).")


class Assignment(BaseModel):
    booking_id: str
    driver_id: str | None = Field(description="null when no driver is left for this booking.")
    score: float | None
    eta_seconds: float | None = Field(description="Estimated pickup ETA of the pair.")


class MatchResponse(BaseModel):
    request_id: str
    city: str
    model: str
    version: str
    score_kind: Literal["probability", "rank_score"]
    total_score: float = Field(description="Sum of the assigned pairs' scores (maximised).")
    arm: Literal["champion"]
    model_scope: Literal["city", "country"]
    policy: Literal["greedy"]
    temperature: None
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
