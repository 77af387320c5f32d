"""Small registered models for the serving tests, logged and registered as training does.

``mlflow.lightgbm.log_model(booster, name="model", signature, input_example,
extra_files=[driver_table.parquet])`` then ``create_model_version`` with the ``score_kind`` /
``objective`` tags, then the ``production`` alias. The boosters are tiny LightGBM models fitted
on random rows with the contract's columns, so tests never depend on the training step.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from matchmaking.schema import ALL_FEATURES, FEATURE_NAMES

# Plausible ranges per feature (uniform draws), so trees split where requests land.
PIP_REQUIREMENTS = ["mlflow", "lightgbm", "numpy", "pandas"]


def random_frame(n: int, seed: int, names: Sequence[str] = FEATURE_NAMES) -> pd.DataFrame:
    """Random rows with the columns ``names`` (float64; default the city contract), in order."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {name: rng.uniform(*ALL_FEATURES[name].typical, n) for name in names}, columns=list(names)
    )


def random_booster(
    seed: int,
    objective: str = "binary",
    n: int = 3000,
    rounds: int = 30,
    names: Sequence[str] = FEATURE_NAMES,
) -> lgb.Booster:
    """A small booster; acceptance falls with ETA and rises with rating and heading home.
    With the country contract (``schema.COUNTRY_FEATURE_NAMES``) it also depends on the city
    context: faster cities and cheap fares for the city accept more."""
    x = random_frame(n, seed, names)
    rng = np.random.default_rng(seed + 1)
    logit = (
        1.0
        - 0.35 * x["eta_min"]
        + 0.8 * (x["rating"] - 4.0)
        + 0.08 * x["home_gain_km"]
        + 0.01 * x["minutes_to_shift_end"] / 10
        + rng.normal(0, 0.5, n)
    )
    if "city_speed_now_kmh" in x:
        logit += 0.15 * (x["city_speed_now_kmh"] - 30.0) - 1.0 * (x["fare_vs_city_reference"] - 1)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    params: dict[str, object] = {
        "objective": objective,
        "num_leaves": 15,
        "learning_rate": 0.1,
        "verbose": -1,
        "num_threads": 1,
        "seed": seed,
    }
    ds = lgb.Dataset(x.to_numpy(), y, feature_name=list(names))
    if objective == "lambdarank":
        ds.set_group(np.full(n // 10, 10))
    return lgb.train(params, ds, num_boost_round=rounds)


def write_driver_table(path: Path, driver_ids: Sequence[str], seed: int) -> Path:
    """A driver feature table like the processing step publishes (one row per driver)."""
    rng = np.random.default_rng(seed)
    n = len(driver_ids)
    offers = rng.integers(0, 150, n).astype(np.float64)
    pd.DataFrame(
        {
            "driver_id": list(driver_ids),
            "shift_start_min": rng.integers(0, 1440, n).astype(np.float64),
            "shift_length_min": rng.integers(240, 720, n).astype(np.float64),
            "offers_28d": offers,
            "accepts_28d": np.floor(offers * rng.uniform(0.3, 0.95, n)),
            "offer_eta_sum_28d": offers * rng.uniform(1.5, 5.0, n),
        }
    ).to_parquet(path, index=False)
    return path


def _experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = None
    if not tracking_uri.startswith(("http://", "https://")):
        location = Path(tempfile.mkdtemp(prefix="mm-test-artifacts-")).as_uri()
    return str(client.create_experiment(name, artifact_location=location))


def register_model(
    tracking_uri: str,
    name: str,
    booster: lgb.Booster,
    driver_table: Path,
    objective: str = "binary",
    alias: str | None = "production",
    version_tags: dict[str, str] | None = None,
    model_tags: dict[str, str] | None = None,
) -> str:
    """Log ``booster`` as training does, register a version of ``name``; returns the version.

    With ``alias`` set, the alias is moved to the new version (a promotion). ``version_tags``
    and ``model_tags`` are added to the version's and (when it is created) the model's tags.
    """
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    exp_id = _experiment(client, f"serving-tests-{name}", tracking_uri)
    example = random_frame(5, 0, booster.feature_name())
    with mlflow.start_run(experiment_id=exp_id) as run:
        info = mlflow.lightgbm.log_model(
            booster,
            name="model",
            signature=infer_signature(example, booster.predict(example.to_numpy())),
            input_example=example,
            extra_files=[str(driver_table)],
            pip_requirements=PIP_REQUIREMENTS,
        )
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, tags=model_tags)
    mv = client.create_model_version(
        name,
        info.model_uri,
        run_id=run.info.run_id,
        model_id=info.model_id,
        tags={
            "objective": objective,
            "score_kind": "probability" if objective == "binary" else "rank_score",
            **(version_tags or {}),
        },
    )
    version = str(mv.version)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return version


def set_alias(tracking_uri: str, name: str, version: str, alias: str = "production") -> None:
    """Move ``alias`` of ``name`` to ``version`` (promotion or rollback)."""
    MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(
        name, alias, version
    )


def register_copies(
    tracking_uri: str, names: Sequence[str], booster: lgb.Booster, driver_table: Path
) -> dict[str, str]:
    """Many registered models sharing one logged model (as a fleet of copies of one model is):
    the model is logged once, then each name gets a version of it at alias ``production``.
    Returns name -> version."""
    first = register_model(tracking_uri, names[0], booster, driver_table)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mv = client.get_model_version(names[0], first)
    versions = {names[0]: first}
    for name in names[1:]:
        client.create_registered_model(name)
        copy = client.create_model_version(
            name,
            mv.source,
            run_id=mv.run_id,
            model_id=mv.model_id or mv.source.removeprefix("models:/"),
            tags=dict(mv.tags),
        )
        client.set_registered_model_alias(name, "production", str(copy.version))
        versions[name] = str(copy.version)
    return versions
