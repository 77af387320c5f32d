"""Inverse-propensity sample weights for training, and the held-out test that decides whether
the weighted model is kept (TrainParams.sample_weights; docs/evaluation.md)."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from matchmaking.config import Settings
from matchmaking.errors import InputError
from matchmaking.lake.datasets import read_manifest
from matchmaking.processing.step import build_dataset
from matchmaking.registry.conventions import SAMPLE_WEIGHT_TAG
from matchmaking.training.data import Labelled, read_candidates, read_labelled, split
from matchmaking.training.params import TrainParams, load_params
from matchmaking.training.train import fit_acceptance, train
from matchmaking.training.weighting import compare, held_out_estimate, ipw_weights
from matchmaking.world.generate import generate_world

FIRST = date(2026, 8, 1)
SMALL = {"valid_days": 2, "num_boost_round": 60, "min_data_in_leaf": 20, "objectives": ["binary"]}


def test_binary_weights_are_the_clipped_inverse_offer_propensities_with_mean_one() -> None:
    p = np.array([0.5, 0.05, 1.0, 0.2, 0.01, 0.1])
    booking = np.array([0, 0, 1, 2, 3, 4])
    got = ipw_weights(p, booking, "binary", clip=10.0)
    raw = [min(1 / x, 10.0) for x in p]  # 2, 10 (cut from 20), 1, 5, 10 (cut from 100), 10
    expected = np.array(raw) / (sum(raw) / len(raw))
    np.testing.assert_allclose(got.values, expected)
    assert got.clipped == 2  # 1/0.1 == 10 is at the cap, not above it
    assert got.values.mean() == pytest.approx(1.0)


def test_lambdarank_weights_are_one_per_booking_its_offer_sequence_inverse_probability() -> None:
    booking = np.array([0, 0, 1, 2, 2, 2])
    p = np.array([0.5, 0.4, 0.9, 0.5, 0.5, 0.2])
    got = ipw_weights(p, booking, "lambdarank", clip=10.0)
    per_booking = {0: 1 / (0.5 * 0.4), 1: 1 / 0.9, 2: min(1 / (0.5 * 0.5 * 0.2), 10.0)}
    raw = np.array([per_booking[b] for b in booking])
    np.testing.assert_allclose(got.values, raw / raw.mean())
    assert got.clipped == 1  # booking 2: 20 capped at 10
    assert got.values[0] == got.values[1] and got.values[3] == got.values[5]


def test_weights_refuse_missing_or_impossible_propensities() -> None:
    with pytest.raises(InputError, match="sample_weights=none"):
        ipw_weights(None, np.zeros(2), "binary", 10.0)
    for bad in (0.0, 1.5, np.nan):
        with pytest.raises(InputError, match=r"outside \(0, 1\]"):
            ipw_weights(np.array([0.5, bad]), np.array([0, 1]), "binary", 10.0)
    with pytest.raises(InputError, match="ipw_clip"):
        ipw_weights(np.array([0.5]), np.array([0]), "binary", 0.5)


def _held_out(scores: list[float]):  # type: ignore[no-untyped-def]
    """Four bookings of two candidates, uniform logging policy (p0 = 0.5): bookings 0 and 1
    logged their first offer to row A, accepted; bookings 2 and 3 to row B, declined."""
    booking = np.repeat(np.arange(4), 2)
    order = np.array([1, 0, 1, 0, 0, 1, 0, 1])
    accepted = np.array([1, np.nan, 1, np.nan, np.nan, 0, np.nan, 0])
    return held_out_estimate(scores, "probability", booking, order, np.full(8, 0.5), accepted)


# Good: picks the accepted logged rows (0.9) and avoids the declined ones (0.1 < 0.6).
# DR per booking: 0.9 + 2 * (1 - 0.9) = 1.1 twice, 0.6 twice: 0.85.
GOOD = [0.9, 0.6, 0.9, 0.6, 0.6, 0.1, 0.6, 0.1]
# Bad: the other way round: 0.6 twice, 0.9 + 2 * (0 - 0.9) = -0.9 twice: -0.15.
BAD = [0.1, 0.6, 0.1, 0.6, 0.6, 0.9, 0.6, 0.9]


def test_compare_keeps_the_weighted_model_only_when_its_held_out_dr_is_higher() -> None:
    good, bad = _held_out(GOOD), _held_out(BAD)
    assert good.estimate.dr == pytest.approx(0.85) and bad.estimate.dr == pytest.approx(-0.15)
    worse = compare(unweighted=good, weighted=bad, min_gain=0.0)
    assert not worse.keep_weighted and worse.reason.startswith("ipw not kept")
    assert worse.metrics["valid_ope_dr_gain_ipw"] == pytest.approx(-1.0)
    assert worse.metrics["valid_ope_dr_none"] == pytest.approx(0.85)
    better = compare(unweighted=bad, weighted=good, min_gain=0.0)
    assert better.keep_weighted and better.reason.startswith("ipw kept")
    assert better.metrics["valid_ope_dr_gain_ipw"] == pytest.approx(1.0)
    # gains per booking 0.5, 0.5, 1.5, 1.5: mean 1, 95% interval 1 -+ 1.96 * 0.577 / 2
    low = better.metrics["valid_ope_dr_gain_ipw_ci_low"]
    assert low == pytest.approx(1.0 - 1.959964 * np.std([0.5, 0.5, 1.5, 1.5], ddof=1) / 2)
    assert compare(unweighted=bad, weighted=good, min_gain=low - 1e-9).keep_weighted
    # a better point estimate is not enough: the interval's lower end must clear the bar
    assert not compare(unweighted=bad, weighted=good, min_gain=low + 1e-9).keep_weighted


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    s = Settings(data_dir=tmp_path_factory.mktemp("train-weights"))
    generate_world(["jakarta"], FIRST, 8, 6, s.lake_dir, 0.002, 300, progress=False)
    return Path(
        build_dataset(
            s, "jakarta", FIRST + timedelta(days=1), FIRST + timedelta(days=7), 0.05
        ).dataset_dir
    )


def _rows(dataset: Path, params: TrainParams) -> tuple[Labelled, Labelled, object]:
    manifest = read_manifest(dataset)
    train_rows, valid_rows = split(read_labelled(dataset, manifest, params).data, 2)
    return train_rows, valid_rows, lambda: read_candidates(dataset, manifest, valid_rows.day.min())


def test_a_weighted_model_worse_on_held_out_is_not_kept(dataset: Path) -> None:
    params = TrainParams(**SMALL, sample_weights=["none", "ipw"], ipw_clip=1e7)
    train_rows, valid_rows, held_out = _rows(dataset, params)
    assert train_rows.propensity is not None
    # Three training rows get a propensity of 1e-6, the rest 1: the weighted fit learns from
    # those three rows alone and its first choices are no better than chance.
    rigged = Labelled(
        train_rows.x, train_rows.y, train_rows.day, train_rows.booking, np.ones(len(train_rows))
    )
    rigged.propensity[:3] = 1e-6  # type: ignore[index]
    got = fit_acceptance(rigged, valid_rows, params, progress=_silent(), held_out=held_out)  # type: ignore[arg-type]
    assert got.metrics["valid_ope_dr_gain_ipw"] < -0.02, got.weight_reason
    assert got.sample_weight == "none" and got.weight_reason.startswith("ipw not kept")
    unweighted = fit_acceptance(
        train_rows, valid_rows, params.model_copy(update={"sample_weights": ["none"]}), _silent()
    )
    assert got.booster.model_to_string() == unweighted.booster.model_to_string()


def test_a_weighted_model_that_clears_the_bar_is_kept(dataset: Path) -> None:
    params = TrainParams(**SMALL, sample_weights=["none", "ipw"], ipw_min_gain=-1.0)
    train_rows, valid_rows, held_out = _rows(dataset, params)
    got = fit_acceptance(train_rows, valid_rows, params, _silent(), held_out)  # type: ignore[arg-type]
    assert got.sample_weight == "ipw" and got.weight_reason.startswith("ipw kept")
    assert 0 < got.metrics["ipw_ess_share_binary"] < 1
    assert "valid_auc_binary_ipw" in got.metrics and "valid_auc_binary" in got.metrics


def test_train_records_the_weighting_choice_beside_the_objective(
    dataset: Path, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = load_params(overrides={**SMALL, "sample_weights": ["none", "ipw"]})
    result = train(settings, "jakarta", dataset, params)
    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(result.run_id).data
    kept = run.tags[SAMPLE_WEIGHT_TAG]
    low = run.metrics["valid_ope_dr_gain_ipw_ci_low"]
    assert kept == ("ipw" if low > params.ipw_min_gain else "none")
    assert run.params["sample_weight"] == kept and run.params["sample_weights"] == "none,ipw"
    assert run.tags["weight_selection"].startswith(f"ipw {'kept' if kept == 'ipw' else 'not'}")
    for key in ("valid_ope_dr_none", "valid_ope_dr_ipw", "valid_ope_dr_gain_ipw_ci_low"):
        assert np.isfinite(run.metrics[key]), key
    mv = client.get_model_version(result.model_name, result.version)
    assert mv.tags[SAMPLE_WEIGHT_TAG] == kept and "Sample weights: ipw" in mv.description


def _silent():  # type: ignore[no-untyped-def]
    from matchmaking.progress import SILENT

    return SILENT
