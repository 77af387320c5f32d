"""The model seam (``matchmaking.scorer``): what scores are, names read back, one loader."""

from __future__ import annotations

import logging
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pytest

from matchmaking.errors import ModelNotFoundError
from matchmaking.registry.conventions import city_of_model, model_name
from matchmaking.scorer import load_scorer, score_kind_of

CITIES = ("jakarta", "bangkok", "ho-chi-minh-city")


@pytest.mark.parametrize(
    ("tags", "kind"),
    [
        ({"score_kind": "rank_score", "objective": "binary"}, "rank_score"),  # the tag decides
        ({"score_kind": "probability"}, "probability"),
        ({"objective": "lambdarank"}, "rank_score"),  # logged before the tag: the objective
        ({"objective": "binary"}, "probability"),
    ],
)
def test_score_kind_comes_from_the_tags(tags: dict[str, str], kind: str) -> None:
    assert score_kind_of(tags) == kind


def test_a_version_without_a_score_kind_is_read_as_probability_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="matchmaking.scorer"):
        assert score_kind_of({}, "m-jakarta v3") == "probability"
    assert "m-jakarta v3" in caplog.text and "score_kind" in caplog.text


@pytest.mark.parametrize(
    ("name", "tags", "city"),
    [
        ("mm-jakarta", {}, "jakarta"),
        ("mm-ho-chi-minh-city", {}, "ho-chi-minh-city"),  # hyphens inside a city id
        ("mm-jakarta", {"city": "jakarta", "model_type": "acceptance"}, "jakarta"),
        # Longer names are other model families, never a city "cancellation-jakarta".
        ("mm-cancellation-jakarta", {}, None),
        ("mm-cancellation-jakarta", {"city": "jakarta", "model_type": "cancellation"}, None),
        ("mm-eu-jakarta", {"city": "jakarta"}, None),  # tagged jakarta, but not its name
        ("mm-jakarta", {"city": "bangkok"}, None),
        ("mmx-jakarta", {}, None),  # another prefix
        ("mm-", {}, None),
    ],
)
def test_a_model_name_is_read_back_strictly(
    name: str, tags: dict[str, str], city: str | None
) -> None:
    assert city_of_model(name, "mm", CITIES, tags=tags) == city


def test_model_names_round_trip() -> None:
    for city in CITIES:
        assert city_of_model(model_name("mm", city), "mm", CITIES, tags={}) == city
    other = model_name("mm", "jakarta", "cancellation")
    assert other == "mm-cancellation-jakarta"
    tags = {"city": "jakarta", "model_type": "cancellation"}
    assert city_of_model(other, "mm", tags=tags) is None


def test_load_scorer_opens_a_logged_model_and_reads_its_tags(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    y = (x[:, 0] + rng.normal(size=300) > 0).astype(float)
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1, "num_threads": 1},
        lgb.Dataset(x, y, feature_name=["a", "b", "c"]),
        num_boost_round=5,
    )
    path = tmp_path / "model"
    mlflow.lightgbm.save_model(booster, str(path))
    scorer = load_scorer(str(path), {"score_kind": "rank_score"}, version="4")
    assert scorer.score_kind == "rank_score" and scorer.version == "4"
    assert scorer.feature_names == ("a", "b", "c")
    np.testing.assert_allclose(scorer.predict(x), booster.predict(x), rtol=0, atol=1e-12)
    importance = scorer.feature_importance()
    assert importance is not None and importance.shape == (3,)

    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="not an MLflow model"):
        load_scorer(str(tmp_path / "empty"))
