"""The data contracts: raw tables written by the world (and, in production, by the data
platform), and the one feature contract shared by training, evaluation and serving.

Nothing else in the package spells a column list: import it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

# ---------------------------------------------------------------------------------------------
# Raw tables. Layout of the lake (hive-style partitions, one directory per city-day):
#   raw/city=<city>/drivers.parquet                        the city's driver roster
#   raw/city=<city>/date=<YYYY-MM-DD>/bookings.parquet     one row per booking
#   raw/city=<city>/date=<YYYY-MM-DD>/candidates.parquet   one row per (booking, candidate driver)
#   truth/city=<city>/drivers.parquet                      hidden driver propensities
#   truth/city=<city>/date=<YYYY-MM-DD>/ground_truth.parquet  true probabilities per candidate
# A partition directory is complete when its _SUCCESS marker exists; readers ignore others.
# ---------------------------------------------------------------------------------------------

UTC_TS = pa.timestamp("us", tz="UTC")

DRIVERS = pa.schema(
    [
        pa.field("driver_id", pa.string(), nullable=False),
        pa.field("city", pa.string(), nullable=False),
        pa.field("home_lat", pa.float64(), nullable=False),
        pa.field("home_lng", pa.float64(), nullable=False),
        pa.field("rating", pa.float64(), nullable=False),
        # Declared shift, local time: minutes after midnight and length (may cross midnight).
        pa.field("shift_start_min", pa.int16(), nullable=False),
        pa.field("shift_length_min", pa.int16(), nullable=False),
    ]
)

BOOKINGS = pa.schema(
    [
        pa.field("booking_id", pa.string(), nullable=False),
        pa.field("city", pa.string(), nullable=False),
        pa.field("requested_at", UTC_TS, nullable=False),
        pa.field("pickup_lat", pa.float64(), nullable=False),
        pa.field("pickup_lng", pa.float64(), nullable=False),
        pa.field("dropoff_lat", pa.float64(), nullable=False),
        pa.field("dropoff_lng", pa.float64(), nullable=False),
        pa.field("trip_km", pa.float64(), nullable=False),  # road distance
        pa.field("fare", pa.float64(), nullable=False),  # local currency
        pa.field("currency", pa.string(), nullable=False),
        pa.field("n_candidates", pa.int16(), nullable=False),
        pa.field("n_offers", pa.int16(), nullable=False),
        # completed | rider_cancelled | expired (all offers declined) | no_driver
        pa.field("status", pa.string(), nullable=False),
        pa.field("assigned_driver_id", pa.string(), nullable=True),
        # The dispatch policy that made the offers, and its version (changes with its params).
        pa.field("logging_policy", pa.string(), nullable=False),
        pa.field("logging_policy_version", pa.string(), nullable=False),
    ]
)

CANDIDATES = pa.schema(
    [
        pa.field("booking_id", pa.string(), nullable=False),
        pa.field("driver_id", pa.string(), nullable=False),
        pa.field("requested_at", UTC_TS, nullable=False),
        pa.field("driver_lat", pa.float64(), nullable=False),
        pa.field("driver_lng", pa.float64(), nullable=False),
        pa.field("distance_km", pa.float64(), nullable=False),  # straight line to pickup
        pa.field("eta_seconds", pa.float64(), nullable=False),  # as the dispatcher logged it
        pa.field("eta_rank", pa.int16(), nullable=False),  # 1 = lowest ETA of the booking
        pa.field("offered", pa.bool_(), nullable=False),
        pa.field("offer_order", pa.int16(), nullable=False),  # 0 = not offered, else 1, 2, ...
        pa.field("accepted", pa.bool_(), nullable=True),  # null when not offered
        # Logged propensities (for off-policy evaluation; never features): P(the logging policy
        # offers this candidate first), > 0 for every candidate and summing to 1 per booking;
        # and, for an offered row, P(this offer at its offer_order | the offers before it).
        pa.field("first_offer_propensity", pa.float64(), nullable=False),
        pa.field("offer_propensity", pa.float64(), nullable=True),  # null when not offered
    ]
)

GROUND_TRUTH = pa.schema(
    [
        pa.field("booking_id", pa.string(), nullable=False),
        pa.field("driver_id", pa.string(), nullable=False),
        pa.field("p_accept", pa.float64(), nullable=False),
        pa.field("p_cancel", pa.float64(), nullable=False),  # rider cancels after acceptance
    ]
)

DRIVER_TRUTH = pa.schema(
    [
        pa.field("driver_id", pa.string(), nullable=False),
        pa.field("propensity", pa.float64(), nullable=False),
    ]
)

RAW_TABLES: dict[str, pa.Schema] = {
    "bookings": BOOKINGS,
    "candidates": CANDIDATES,
}
TRUTH_TABLES: dict[str, pa.Schema] = {"ground_truth": GROUND_TRUTH}
SUCCESS_MARKER = "_SUCCESS"

# ---------------------------------------------------------------------------------------------
# What the scoring service logs (``matchmaking.lake.serving_log``): one DECISIONS row per ranked
# candidate of every answer (shadow scorings included, ``served`` false), one OUTCOMES row per
# event that dispatch reports for an offer. Partitioned by city, date and hour of ``decided_at``
# / ``received_at`` (UTC) under ``<lake>/serving/<table>/``.
# ---------------------------------------------------------------------------------------------

DECISIONS = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("booking_id", pa.string(), nullable=False),
        pa.field("city", pa.string(), nullable=False),
        pa.field("decided_at", UTC_TS, nullable=False),
        pa.field("endpoint", pa.string(), nullable=False),  # "rank" or "match"
        pa.field("model_name", pa.string(), nullable=True),  # null: nearest-ETA fallback
        pa.field("model_version", pa.string(), nullable=True),
        pa.field("model_scope", pa.string(), nullable=False),  # "city", "country", "fallback"
        pa.field("arm", pa.string(), nullable=False),  # DECISION_ARMS
        pa.field("served", pa.bool_(), nullable=False),  # false: shadow, never answered
        pa.field("driver_id", pa.string(), nullable=False),
        pa.field("position", pa.int16(), nullable=False),  # 1 = offered first
        pa.field("score", pa.float64(), nullable=True),  # null in fallback
        pa.field("eta_seconds", pa.float64(), nullable=False),
        # The serving policy's exact probabilities (1 / 0 when it is deterministic):
        pa.field("first_propensity", pa.float64(), nullable=False),  # P(ranked first)
        pa.field("propensity", pa.float64(), nullable=False),  # P(this position | those above)
        pa.field("policy", pa.string(), nullable=False),  # e.g. "greedy", "plackett-luce"
        pa.field("temperature", pa.float64(), nullable=True),  # null: no exploration
    ]
)
DECISION_ARMS = ("champion", "challenger", "shadow", "fallback")

OUTCOMES = pa.schema(
    [
        pa.field("booking_id", pa.string(), nullable=False),
        pa.field("driver_id", pa.string(), nullable=False),
        pa.field("position", pa.int16(), nullable=False),  # the offer's position, 1 = first
        pa.field("city", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),  # "offer" or "trip" (OUTCOME_STAGES)
        pa.field("outcome", pa.string(), nullable=False),
        pa.field("occurred_at", UTC_TS, nullable=False),  # when dispatch saw it
        pa.field("received_at", UTC_TS, nullable=False),  # when the service stored it
        pa.field("request_id", pa.string(), nullable=True),  # the decision's, when known
    ]
)
# An offer's response, then (accepted offers only) the trip's end. One row per (booking, driver,
# position, stage): a repeat is stored once (OUTCOME_KEY).
OUTCOME_STAGES: dict[str, tuple[str, ...]] = {
    "offer": ("accepted", "declined", "timed_out"),
    "trip": ("completed", "rider_cancelled"),
}
OUTCOME_KEY: tuple[str, ...] = ("booking_id", "driver_id", "position", "stage")
SERVING_TABLES: dict[str, pa.Schema] = {"decisions": DECISIONS, "outcomes": OUTCOMES}

BOOKING_STATUSES = ("completed", "rider_cancelled", "expired", "no_driver")


# ---------------------------------------------------------------------------------------------
# The feature contract: names, dtypes and order of the model's input. Training builds its matrix
# with these columns in this order; serving builds one float array per request in this order.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: str  # numpy dtype of the model input column
    description: str
    # A plausible (low, high) of the value in a Jakarta-like city: for synthetic model inputs
    # (test and benchmark models), not a validation bound. Required: a new feature states it.
    typical: tuple[float, float]
    # Domain knowledge the model must respect: +1 the score never falls as the value rises,
    # -1 it never rises, 0 unconstrained (LightGBM monotone_constraints).
    monotone: int = 0


FEATURES: tuple[Feature, ...] = (
    Feature(
        "eta_min",
        "float64",
        "pickup ETA in minutes (given, or estimated as in the world)",
        monotone=-1,
        typical=(0.5, 15.0),
    ),
    Feature(
        "eta_gap_min",
        "float64",
        "ETA minus the lowest ETA among the booking's candidates",
        monotone=-1,
        typical=(0.0, 10.0),
    ),
    Feature(
        "eta_rank",
        "float64",
        "rank of the ETA among the booking's candidates, 1 = lowest",
        monotone=-1,
        typical=(1.0, 8.0),
    ),
    Feature(
        "pickup_km",
        "float64",
        "straight-line km from the driver to the pickup",
        monotone=-1,
        typical=(0.0, 4.0),
    ),
    Feature("rating", "float64", "driver rating, 1-5", monotone=1, typical=(3.0, 5.0)),
    Feature(
        "home_gain_km",
        "float64",
        "km the trip brings the driver closer to home",
        monotone=1,
        typical=(-15.0, 15.0),
    ),
    Feature(
        "home_cos",
        "float64",
        "cosine between trip direction and direction to home",
        typical=(-1.0, 1.0),
    ),
    Feature(
        "minutes_to_shift_end",
        "float64",
        "minutes left in the driver's shift (<0: over)",
        typical=(-60.0, 600.0),
    ),
    Feature("hour_local", "float64", "local hour of the request, 0-23", typical=(0.0, 23.0)),
    Feature("day_of_week", "float64", "local day of week, Monday = 0", typical=(0.0, 6.0)),
    Feature("trip_km", "float64", "road km pickup -> dropoff", typical=(2.0, 20.0)),
    Feature("fare", "float64", "quoted fare, local currency", typical=(15_000.0, 100_000.0)),
    Feature(
        "drv_offers_28d",
        "float64",
        "offers made to the driver in the 28 days before",
        typical=(0.0, 200.0),
    ),
    Feature(
        "drv_accept_rate_28d",
        "float64",
        "smoothed acceptance rate over those offers",
        typical=(0.2, 1.0),
    ),
    Feature(
        "drv_offer_eta_28d",
        "float64",
        "mean pickup ETA (min) of those offers, NaN without history: tells a driver who "
        "declines from one who was offered far pickups",
        typical=(1.0, 6.0),
    ),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)

# City-level context: constant within a city, read from its ``Market`` (``markets.py``), never
# from the data. Only country models (pooled over a country's cities) take them, appended after
# ``FEATURE_NAMES`` (``COUNTRY_FEATURE_NAMES``); a city model's input stays ``FEATURE_NAMES``,
# so every city model already trained or served keeps its contract. Serving builds them from
# the request's ``Market`` with ``features.context.context_row`` (docs/pooled.md).
CONTEXT_FEATURES: tuple[Feature, ...] = (
    Feature(
        "city_log10_daily_bookings",
        "float64",
        "log10 of the catalogue's full-scale daily bookings of the city (its size)",
        typical=(4.0, 6.0),
    ),
    Feature("city_radius_km", "float64", "radius of the city's service area", typical=(8.0, 25.0)),
    Feature(
        "city_speed_peak_kmh",
        "float64",
        "the city's road speed at the worst peak",
        typical=(15.0, 25.0),
    ),
    Feature(
        "city_speed_offpeak_kmh",
        "float64",
        "the city's midday off-peak road speed",
        typical=(25.0, 35.0),
    ),
    Feature("city_speed_night_kmh", "float64", "the city's night road speed", typical=(30.0, 45.0)),
    Feature(
        "city_reference_fare",
        "float64",
        "the city's tariff for a reference trip (8 road km at off-peak speed), local currency",
        typical=(20_000.0, 60_000.0),
    ),
    Feature(
        "fare_vs_city_reference",
        "float64",
        "quoted fare / the city's reference fare: what a fare is worth in its city",
        monotone=1,
        typical=(0.3, 3.0),
    ),
    Feature(
        "city_speed_now_kmh",
        "float64",
        "the city's road speed at the request's local hour (its speed profile)",
        typical=(15.0, 45.0),
    ),
)
CONTEXT_FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in CONTEXT_FEATURES)
#: The input of a country model: the city contract, then the city context.
COUNTRY_FEATURE_NAMES: tuple[str, ...] = FEATURE_NAMES + CONTEXT_FEATURE_NAMES
#: Every feature either contract uses, by name (monotone constraints are looked up here).
ALL_FEATURES: dict[str, Feature] = {f.name: f for f in (*FEATURES, *CONTEXT_FEATURES)}

ID_COLUMNS: tuple[str, ...] = ("booking_id", "driver_id")
# What the logging policy logged (raw CANDIDATES and BOOKINGS): carried beside the features in
# the published dataset for off-policy evaluation. Never features (tests/unit/test_features.py).
LOGGED_POLICY_COLUMNS: tuple[str, ...] = (
    "offer_order",
    "first_offer_propensity",
    "offer_propensity",
    "logging_policy",
    "logging_policy_version",
)
TIME_COLUMN = "requested_at"
GROUP_COLUMN = "booking_id"
LABEL_COLUMN = "accepted"
