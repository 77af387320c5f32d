"""Models registered on the real tracking server for the serving tests, and what they score.

The fixtures that build them (``registered``, ``own_registry``, ``live``) are in
``tests/serving/conftest.py``; the registry tests use these helpers too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from matchmaking.features.context import with_context
from matchmaking.features.core import build_matrix
from matchmaking.features.online import (
    DriverTable,
    OnlineBooking,
    OnlineCandidates,
    build_online_inputs,
)
from matchmaking.markets import get_market
from matchmaking.registry.conventions import (
    COUNTRY_TAG,
    FEATURE_SET_TAG,
    SCOPE_COUNTRY,
    SCOPE_TAG,
    country_model_name,
)
from matchmaking.schema import COUNTRY_FEATURE_NAMES
from serving.settings import ServeSettings
from support.model_factory import random_booster, register_model, write_driver_table

KNOWN_DRIVERS = [f"d-{i}" for i in range(40)]


@dataclass
class Registered:
    """What the module registered on the session's tracking server."""

    uri: str
    prefix: str
    tmp: Path
    boosters: dict[str, lgb.Booster] = field(default_factory=dict)
    tables: dict[str, Path] = field(default_factory=dict)
    versions: dict[str, list[str]] = field(default_factory=dict)

    def name(self, city: str) -> str:
        return f"{self.prefix}-{city}"

    def register(
        self, city: str, seed: int, alias: str | None = "production", objective: str = "binary"
    ) -> str:
        booster = random_booster(seed, objective=objective)
        folder = self.tmp / f"{city}-{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        table = write_driver_table(folder / "driver_table.parquet", KNOWN_DRIVERS, seed)
        version = register_model(self.uri, self.name(city), booster, table, objective, alias)
        self.boosters[f"{city}@{version}"] = booster
        self.tables[f"{city}@{version}"] = table
        self.versions.setdefault(city, []).append(version)
        return version

    def country_name(self, country: str) -> str:
        return country_model_name(self.prefix, country)

    def register_country(self, country: str, seed: int, alias: str | None = "production") -> str:
        """A country model (``<prefix>-country-<cc>``, the country contract, the tags
        ``train-country`` sets); its booster and table are kept under ``country:<CC>``."""
        booster = random_booster(seed, names=COUNTRY_FEATURE_NAMES)
        key = f"country:{country.upper()}"
        folder = self.tmp / f"{key.replace(':', '-')}-{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        table = write_driver_table(folder / "driver_table.parquet", KNOWN_DRIVERS, seed)
        tags = {SCOPE_TAG: SCOPE_COUNTRY, COUNTRY_TAG: country.upper()}
        version = register_model(
            self.uri,
            self.country_name(country),
            booster,
            table,
            alias=alias,
            version_tags={**tags, FEATURE_SET_TAG: SCOPE_COUNTRY},
            model_tags=tags,
        )
        self.boosters[f"{key}@{version}"] = booster
        self.tables[f"{key}@{version}"] = table
        self.versions.setdefault(key, []).append(version)
        return version


def serve_settings(reg: Registered, **overrides: object) -> ServeSettings:
    """Service settings pointing at the test registry (fast polling)."""
    values: dict[str, object] = {
        "tracking_uri": reg.uri,
        "model_name_prefix": reg.prefix,
        "hot_cities": ["jakarta"],
        "poll_interval_s": 0.3,
        "registry_timeout_s": 2,
        "registry_retries": 0,
        "max_body_bytes": 200_000,
    }
    values.update(overrides)
    return ServeSettings(**values)  # type: ignore[arg-type]


def expected_scores(
    reg: Registered, city: str, version: str, body: dict[str, Any], country: str | None = None
) -> dict[str, float]:
    """Booster.predict on the online feature matrix, by driver id (built outside the service);
    with ``country``, of that country's model, on the matrix with ``city``'s context columns."""
    b = body["booking"]
    cands = body["candidates"]
    booking = OnlineBooking(
        b["pickup"]["lat"],
        b["pickup"]["lng"],
        b["dropoff"]["lat"],
        b["dropoff"]["lng"],
        datetime.fromisoformat(b["requested_at"]),
        b.get("trip_km"),
        b.get("fare"),
    )
    rows = OnlineCandidates(
        booking=np.zeros(len(cands), dtype=np.int64),
        driver_id=[c["driver_id"] for c in cands],
        lat=np.array([c["location"]["lat"] for c in cands]),
        lng=np.array([c["location"]["lng"] for c in cands]),
        rating=np.array([c["rating"] for c in cands]),
        home_lat=np.array([c["home"]["lat"] for c in cands]),
        home_lng=np.array([c["home"]["lng"] for c in cands]),
        eta_seconds=np.array([c.get("eta_seconds", np.nan) for c in cands], dtype=np.float64),
    )
    key = f"country:{country.upper()}@{version}" if country else f"{city}@{version}"
    market = get_market(city)
    table = DriverTable.from_parquet(reg.tables[key])
    matrix = build_matrix(build_online_inputs(market, [booking], rows, table))
    if country:
        matrix = with_context(matrix, market)
    scores = reg.boosters[key].predict(matrix)
    return dict(zip(rows.driver_id, scores.tolist(), strict=True))
