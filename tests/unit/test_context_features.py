"""The country scope's contract: context features from the market, names that never turn into
a wrong city, and the city contract left as it was."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from matchmaking.errors import ConfigError
from matchmaking.features.context import (
    context_columns,
    model_input,
    reference_fare,
    with_context,
)
from matchmaking.markets import default_catalogue, load_catalogue
from matchmaking.registry.conventions import (
    city_of_model,
    country_model_name,
    country_of_model,
    model_name,
)
from matchmaking.schema import CONTEXT_FEATURE_NAMES, COUNTRY_FEATURE_NAMES, FEATURE_NAMES

CAT = default_catalogue()
MANILA = Path(__file__).resolve().parents[1] / "markets" / "manila.yaml"


def test_context_comes_from_the_market_and_differs_between_cities() -> None:
    """Constant per city except the hour's speed and the fare's worth; two cities of one
    country get different values (else the pooled model could not tell them apart)."""
    hours = np.array([3.0, 8.0, 8.0, 13.0])
    fares = np.array([20_000.0, 30_000.0, 30_000.0, 45_000.0])
    cols = {
        city: dict(
            zip(CONTEXT_FEATURE_NAMES, context_columns(CAT.get(city), hours, fares).T, strict=True)
        )
        for city in ("jakarta", "makassar")
    }
    jakarta = CAT.get("jakarta")
    j = cols["jakarta"]
    assert np.all(j["city_log10_daily_bookings"] == math.log10(jakarta.daily_bookings))
    assert list(j["city_speed_now_kmh"]) == [jakarta.speed_at(h) for h in (3, 8, 8, 13)]
    assert np.allclose(j["fare_vs_city_reference"], fares / reference_fare(jakarta))
    for name in ("city_log10_daily_bookings", "city_radius_km", "city_reference_fare"):
        assert j[name][0] != cols["makassar"][name][0], name


def test_a_country_model_takes_the_city_contract_then_the_context() -> None:
    """``with_context`` (what serving appends for a country model) and ``model_input`` (what
    evaluation and the gate score) agree; a city model's input is the city contract alone."""
    assert COUNTRY_FEATURE_NAMES == FEATURE_NAMES + CONTEXT_FEATURE_NAMES
    rng = np.random.default_rng(0)
    matrix = rng.uniform(1, 20, size=(6, len(FEATURE_NAMES)))
    rows = pd.DataFrame(matrix, columns=list(FEATURE_NAMES))
    market = CAT.get("medan")
    appended = with_context(matrix, market)
    assert appended.shape == (6, len(COUNTRY_FEATURE_NAMES))
    assert np.array_equal(appended[:, : len(FEATURE_NAMES)], matrix)
    assert np.allclose(model_input(rows, COUNTRY_FEATURE_NAMES, market), appended)
    assert np.array_equal(model_input(rows, FEATURE_NAMES, market), matrix)


@pytest.mark.parametrize("cc", sorted({m.country for m in CAT.markets.values()}))
def test_a_country_model_name_is_never_a_city_s(cc: str) -> None:
    """``<prefix>-country-<cc>`` reads back as its country and as no city, with or without
    tags and with or without the catalogue; a city's name never reads as a country."""
    name = country_model_name("mm", cc)
    assert name == f"mm-country-{cc.lower()}"
    tags = {"scope": "country", "country": cc, "model_type": "acceptance"}
    assert country_of_model(name, "mm", tags) == cc
    assert country_of_model(name, "mm") == cc
    assert city_of_model(name, "mm", CAT.ids()) is None
    assert city_of_model(name, "mm") is None  # without the catalogue: no "country-id" city
    assert city_of_model(name, "mm", tags=tags) is None
    for city in CAT.cities_of(cc):
        assert country_of_model(model_name("mm", city), "mm", {"city": city}) is None


def test_a_market_id_cannot_take_the_country_models_prefix(tmp_path: Path) -> None:
    data = yaml.safe_load(MANILA.read_text())
    data["markets"][0]["id"] = "country-ph"
    path = tmp_path / "markets.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="reserved for country models"):
        load_catalogue([path])
