"""`evaluate` on logged data alone: off-policy estimates everywhere, simulator diagnostics only
where the lake has the simulator's truth/ (issue 12).

One small world, a binary model and a LambdaRank one trained once; the holdout is evaluated on
the lake as generated and on a copy of it without truth/.
"""

from __future__ import annotations

import math
import shutil
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from matchmaking.config import Settings
from matchmaking.evaluation.evaluate import SIMULATOR_TAG, evaluate, format_summary
from matchmaking.evaluation.logged import DEFAULT_DR_CLIP, POLICIES
from matchmaking.processing.step import build_dataset
from matchmaking.training.params import TrainParams
from matchmaking.training.train import TrainResult, train
from matchmaking.world.generate import generate_world

pytestmark = pytest.mark.slow

CITY = "jakarta"
TRAIN = (date(2026, 8, 2), date(2026, 8, 5))
HOLDOUT = (date(2026, 8, 6), date(2026, 8, 7))
OPE_KEYS = ("dr", "dr_ci_low", "dr_ci_high", "ips", "snips", "ess", "support", "bookings")


@dataclass(frozen=True)
class World:
    settings: Settings
    holdout: Path
    binary: TrainResult
    ranker: TrainResult


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("evaluate-logged")
    prefix = f"el-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        data_dir=root,
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        model_name_prefix=prefix,
        experiment_prefix=prefix,
    )
    generate_world([CITY], date(2026, 8, 1), 7, 13, settings.lake_dir, 0.002, 400, False)
    features = build_dataset(settings, CITY, *TRAIN, max_bad_share=0.05).dataset_dir
    holdout = build_dataset(settings, CITY, *HOLDOUT, max_bad_share=0.05).dataset_dir
    common = {"valid_days": 1, "num_boost_round": 30, "min_data_in_leaf": 20}
    binary = train(settings, CITY, features, TrainParams(objectives=["binary"], **common))
    ranker = train(
        settings,
        CITY,
        features,
        TrainParams(objectives=["lambdarank"], **common),
        reuse_existing=False,
    )
    return World(settings, Path(str(holdout)), binary, ranker)


def without_truth(world: World, root: Path) -> tuple[Settings, Path]:
    """A copy of the lake with no truth/ (as a company's own lake), and the holdout in it."""
    lake = Path(str(world.settings.lake_dir))
    shutil.copytree(lake, root / "lake", ignore=shutil.ignore_patterns("truth"))
    assert not (root / "lake" / "truth").exists() and (root / "lake" / "raw").is_dir()
    settings = world.settings.model_copy(update={"data_dir": root})
    assert Path(str(settings.lake_dir)) == root / "lake"
    return settings, root / "lake" / world.holdout.relative_to(lake)


def test_with_truth_evaluate_logs_estimates_and_the_simulator_diagnostics(world: World) -> None:
    result = evaluate(world.settings, CITY, world.binary.model_uri, world.holdout)
    m = result.metrics
    assert 0.5 < m["logged.model.auc"] <= 1.0
    for policy in POLICIES:
        assert math.isfinite(m[f"logged.{policy}.auc"])
        for key in OPE_KEYS:
            assert math.isfinite(m[f"ope.{policy}.{key}"]), (policy, key)
        low, mid, high = (m[f"ope.{policy}.dr{s}"] for s in ("_ci_low", "", "_ci_high"))
        assert low < mid < high
        # the comparison with the truth is the estimate minus the true value
        truth = m[f"sim.ope.{policy}.true_value"]
        assert m[f"sim.ope.{policy}.dr_error"] == pytest.approx(mid - truth)
        assert m[f"sim.ope.{policy}.dr_covered"] == float(low <= truth <= high)
        assert 0.0 < m[f"sim.replay.{policy}.acceptance"] <= 1.0
    assert 0.8 <= m["sim.oracle.oracle.auc"] <= 1.0
    assert m["sim.replay.oracle.acceptance"] >= m["sim.replay.nearest_eta.acceptance"]
    assert "sim.matching.batch_acceptance" in m
    # the model against each baseline, booking by booking
    for baseline in ("nearest_eta", "highest_rating"):
        diff = f"ope_paired.model_vs_{baseline}"
        assert m[f"{diff}.dr"] == pytest.approx(m["ope.model.dr"] - m[f"ope.{baseline}.dr"])
        assert m[f"{diff}.dr_ci_low"] < m[f"{diff}.dr"] < m[f"{diff}.dr_ci_high"]
    # the logged estimate of the model is near its true value (a 2-day holdout: loose)
    assert abs(m["ope.model.dr"] - m["sim.ope.model.true_value"]) < 0.05
    client = MlflowClient(tracking_uri=world.settings.tracking_uri)
    run = client.get_run(str(result.run_id))
    assert run.data.tags[SIMULATOR_TAG] == "yes"
    assert run.data.params["ope_direct_method"] == "model probability"
    assert run.data.params["ope_dr_clip"] == str(DEFAULT_DR_CLIP)
    assert run.data.params["ope_clip"] == "none"
    assert run.data.params["logging_policy"]
    assert run.data.metrics["ope.model.dr"] == m["ope.model.dr"]
    plots = {a.path for a in client.list_artifacts(str(result.run_id), "plots")}
    assert {"plots/off_policy_estimates.png", "plots/sim_replay.png"} <= plots
    summary = format_summary([result])
    assert "simulator diagnostics" in summary and "ope.dr" in summary


def test_without_truth_only_the_simulator_diagnostics_are_missing(
    world: World, tmp_path: Path
) -> None:
    with_truth = evaluate(
        world.settings, CITY, world.binary.model_uri, world.holdout, log_run=False
    )
    settings, holdout = without_truth(world, tmp_path)
    result = evaluate(settings, CITY, world.binary.model_uri, holdout)
    assert not [k for k in result.metrics if k.startswith("sim.")]
    assert not result.simulated and result.matching == {}
    logged = {k: v for k, v in with_truth.metrics.items() if not k.startswith("sim.")}
    # logged evidence does not depend on the truth: the same numbers, to the last bit
    assert result.metrics.keys() == logged.keys()
    for key, value in logged.items():
        assert result.metrics[key] == value or (
            math.isnan(value) and math.isnan(result.metrics[key])
        )
    for policy in POLICIES:
        assert all(math.isfinite(result.metrics[f"ope.{policy}.{k}"]) for k in OPE_KEYS)
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    run = client.get_run(str(result.run_id))
    assert run.data.tags[SIMULATOR_TAG] == "no"
    assert not [k for k in run.data.metrics if k.startswith("sim.")]
    assert run.data.metrics["ope.model.dr_ci_high"] == result.metrics["ope.model.dr_ci_high"]
    plots = {a.path for a in client.list_artifacts(str(result.run_id), "plots")}
    assert "plots/off_policy_estimates.png" in plots and "plots/sim_replay.png" not in plots
    summary = format_summary([result])
    assert "ope.dr" in summary and "simulator" not in summary


def test_a_rankers_scores_are_calibrated_cross_fitted_for_the_direct_method(world: World) -> None:
    result = evaluate(world.settings, CITY, world.ranker.model_uri, world.holdout)
    m = result.metrics
    assert math.isnan(m["logged.model.logloss"])  # rank scores are no probabilities
    assert 0.0 <= m["ope.model.dm"] <= 1.0
    assert abs(m["ope.model.dr"] - m["sim.ope.model.true_value"]) < 0.05
    run = MlflowClient(tracking_uri=world.settings.tracking_uri).get_run(str(result.run_id))
    assert "cross-fitted" in run.data.params["ope_direct_method"]
