"""Behavioural tests of the trained model (directional, invariance, minimum functionality).

Candidates are perturbed in their raw inputs and re-featurised through the one feature
function, so derived features (ETA gap and rank) move together as they do in production.
The monotone directions are also checked where they are set (the model's own constraints)
and by a dense sweep of each constrained feature over real rows, which the same data trained
without constraints fails (shown below).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import numpy.typing as npt
import pytest
from support.processed_world import CITY, ProcessedWorld

from matchmaking.config import Settings
from matchmaking.features.core import CandidateInputs, build_matrix
from matchmaking.lake.datasets import read_dataset
from matchmaking.schema import FEATURE_NAMES, FEATURES
from matchmaking.training.params import Objective, TrainParams, load_params
from matchmaking.training.train import fit, labelled, matrix, split_by_day, train

# What the README promises: a longer ETA never raises a score; a better rating or a trip
# toward home never lowers it. The contract (schema.FEATURES) must say the same.
PROMISED = {
    "eta_min": -1,
    "eta_gap_min": -1,
    "eta_rank": -1,
    "pickup_km": -1,
    "rating": 1,
    "home_gain_km": 1,
}


def _fit(processed_world: ProcessedWorld, params: TrainParams) -> lgb.Booster:
    rows, _ = read_dataset(processed_world.train.dataset_dir)
    train_rows, valid = split_by_day(labelled(rows), 5)
    return fit("binary", train_rows, valid, params).booster


@pytest.fixture(scope="module")
def booster(processed_world: ProcessedWorld) -> lgb.Booster:
    return _fit(processed_world, load_params(overrides={"objectives": ["binary"]}))


class _Unconstrained(TrainParams):
    """The project's parameters without the monotone constraints."""

    def lgb_params(
        self, objective: Objective, feature_names: tuple[str, ...] = FEATURE_NAMES
    ) -> dict[str, object]:
        params = super().lgb_params(objective, feature_names)
        del params["monotone_constraints"], params["monotone_constraints_method"]
        return params


@pytest.fixture(scope="module")
def unconstrained_booster(processed_world: ProcessedWorld) -> lgb.Booster:
    """The same data and parameters, constraints removed: its own fixture, so no test
    changes the model the other tests check."""
    params = _Unconstrained(**load_params(overrides={"objectives": ["binary"]}).model_dump())
    return _fit(processed_world, params)


@pytest.fixture(scope="module")
def sweep_rows(processed_world: ProcessedWorld) -> npt.NDArray[np.float64]:
    """400 real holdout candidates (offered or not), in the contract's column order."""
    rows, _ = read_dataset(processed_world.holdout.dataset_dir)
    picked = np.random.default_rng(0).choice(len(rows), size=400, replace=False)
    return matrix(rows.iloc[np.sort(picked)])


def monotone_violations(
    model: lgb.Booster, base: npt.NDArray[np.float64], points: int = 41
) -> dict[str, int]:
    """For each promised feature, the number of base rows whose score moves against the
    promised direction somewhere along a sweep of that feature, all other features fixed.

    The sweep covers the feature's typical range and its 1st-99th percentile in the rows.
    """
    out = {}
    for name, sign in PROMISED.items():
        j = FEATURE_NAMES.index(name)
        lo, hi = FEATURES[j].typical
        lo = min(lo, float(np.nanpercentile(base[:, j], 1)))
        hi = max(hi, float(np.nanpercentile(base[:, j], 99)))
        grid = np.linspace(lo, hi, points)
        x = np.repeat(base, points, axis=0)
        x[:, j] = np.tile(grid, len(base))
        s = np.asarray(model.predict(x, raw_score=True)).reshape(len(base), points)
        against = sign * np.diff(s, axis=1) < -1e-12
        out[name] = int(against.any(axis=1).sum())
    return out


def test_contract_states_the_promised_directions() -> None:
    assert {f.name: f.monotone for f in FEATURES if f.monotone} == PROMISED


def test_model_carries_the_contract_constraints(booster: lgb.Booster) -> None:
    dump = booster.dump_model()
    assert dump["feature_names"] == list(FEATURE_NAMES)
    assert dump["monotone_constraints"] == [f.monotone for f in FEATURES]


def test_registered_model_carries_the_contract_constraints(
    processed_world: ProcessedWorld, tmp_path: Path
) -> None:
    """What ships: the model file that ``train`` logs and registers, loaded back. It registers
    into its own store, leaving the session world's registry to the tests that count on it."""
    own = Settings(data_dir=tmp_path / "data", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = load_params(overrides={"objectives": ["binary"], "num_boost_round": 30})
    result = train(own, CITY, processed_world.train.dataset_dir, params, reuse_existing=False)
    dump = mlflow.lightgbm.load_model(result.model_uri).dump_model()
    assert dump["feature_names"] == list(FEATURE_NAMES)
    assert dump["monotone_constraints"] == [f.monotone for f in FEATURES]


def test_dense_sweep_finds_no_score_against_a_promised_direction(
    booster: lgb.Booster, sweep_rows: npt.NDArray[np.float64]
) -> None:
    assert monotone_violations(booster, sweep_rows) == dict.fromkeys(PROMISED, 0)


def test_dense_sweep_flags_the_same_data_trained_without_constraints(
    unconstrained_booster: lgb.Booster, sweep_rows: npt.NDArray[np.float64]
) -> None:
    """The sweep above is dense enough to matter: without the constraints it fails, on every
    promised feature (measured: 53-100% of the rows, depending on the feature)."""
    found = monotone_violations(unconstrained_booster, sweep_rows)
    assert all(n >= len(sweep_rows) // 10 for n in found.values()), found


def booking(n: int = 6, seed: int = 0) -> CandidateInputs:
    """One Jakarta morning booking with ``n`` varied candidates."""
    rng = np.random.default_rng(seed)

    def full(v: float) -> np.ndarray:
        return np.full(n, v)

    return CandidateInputs(
        group=np.zeros(n, dtype=np.int64),
        driver_lat=-6.20 + rng.uniform(-0.02, 0.02, n),
        driver_lng=106.82 + rng.uniform(-0.02, 0.02, n),
        pickup_lat=full(-6.20),
        pickup_lng=full(106.82),
        dropoff_lat=full(-6.26),
        dropoff_lng=full(106.85),
        home_lat=-6.20 + rng.uniform(-0.15, 0.15, n),
        home_lng=106.82 + rng.uniform(-0.15, 0.15, n),
        rating=rng.uniform(4.3, 5.0, n),
        eta_seconds=rng.uniform(60, 420, n),
        speed_kmh=full(20.0),
        local_minute=full(8 * 60 + 10),
        day_of_week=full(1.0),
        shift_start_min=full(6 * 60),
        shift_length_min=rng.uniform(180, 600, n),
        trip_km=full(9.0),
        fare=full(38000.0),
        drv_offers_28d=rng.uniform(50, 300, n),
        drv_accepts_28d=rng.uniform(40, 250, n),
        drv_offer_eta_sum_28d=rng.uniform(150, 900, n),
    )


def scores(model: lgb.Booster, x: CandidateInputs) -> np.ndarray:
    return np.asarray(model.predict(build_matrix(x)))


@pytest.mark.parametrize("seed", range(5))
def test_longer_eta_never_raises_the_score(booster: lgb.Booster, seed: int) -> None:
    x = booking(seed=seed)
    before = scores(booster, x)
    for i in range(len(before)):
        for extra in (30.0, 120.0, 600.0):
            eta = x.eta_seconds.copy()
            eta[i] += extra
            after = scores(booster, replace(x, eta_seconds=eta))
            assert after[i] <= before[i] + 1e-12


@pytest.mark.parametrize("seed", range(5))
def test_better_rating_and_home_heading_never_lower_the_score(
    booster: lgb.Booster, seed: int
) -> None:
    x = booking(seed=seed)
    before = scores(booster, x)
    better_rating = scores(booster, replace(x, rating=np.minimum(x.rating + 0.3, 5.0)))
    assert np.all(better_rating >= before - 1e-12)
    # Move each driver's home onto the dropoff: the trip now takes every driver home.
    homeward = replace(x, home_lat=x.dropoff_lat.copy(), home_lng=x.dropoff_lng.copy())
    assert np.all(
        build_matrix(homeward)[:, 5] >= build_matrix(x)[:, 5]
    )  # home_gain_km grew for all
    assert np.all(scores(booster, homeward) >= before - 1e-12)


def test_scores_do_not_depend_on_candidate_order(booster: lgb.Booster) -> None:
    x = booking(n=8, seed=3)
    perm = np.random.default_rng(1).permutation(8)
    shuffled = CandidateInputs(
        **{
            k: (v if k == "group" else v[perm])
            for k, v in x.__dict__.items()  # dataclass fields, all arrays
        }
    )
    np.testing.assert_allclose(scores(booster, shuffled), scores(booster, x)[perm], rtol=0, atol=0)


def test_clearly_better_candidate_ranks_first(booster: lgb.Booster) -> None:
    x = booking(n=2, seed=4)
    good = replace(
        x,
        eta_seconds=np.array([90.0, 540.0]),
        rating=np.array([4.95, 4.2]),
        drv_offers_28d=np.array([200.0, 200.0]),
        drv_accepts_28d=np.array([190.0, 110.0]),
        home_lat=np.array([-6.30, -6.05]),
        home_lng=np.array([106.88, 106.75]),
    )
    s = scores(booster, good)
    assert s[0] > s[1]
    assert 0.0 < s[1] < s[0] < 1.0
