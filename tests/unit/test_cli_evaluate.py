"""`matchmaking evaluate` refuses what it cannot or must not evaluate, in one line.

A missing version or a URI that names no model is "model not found" (exit 6); a model of
another city is bad input (exit 2), as `train` refuses features of another city. Models are
trained once into a SQLite store of this module; the CLI runs as a subprocess against it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from matchmaking.config import Settings
from matchmaking.processing.step import build_dataset
from matchmaking.training.params import TrainParams
from matchmaking.training.train import TrainResult, train
from matchmaking.world.generate import generate_world

pytestmark = pytest.mark.slow

CITIES = ("jakarta", "bangkok")
TRAIN = (date(2026, 8, 2), date(2026, 8, 5))
HOLDOUT = (date(2026, 8, 6), date(2026, 8, 7))


@dataclass(frozen=True)
class Models:
    settings: Settings
    env: dict[str, str]
    holdout: dict[str, Path]
    trained: dict[str, TrainResult]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("cli-evaluate")
    prefix = f"ev-{uuid.uuid4().hex[:8]}"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    settings = Settings(
        data_dir=root, tracking_uri=uri, model_name_prefix=prefix, experiment_prefix=prefix
    )
    generate_world(list(CITIES), date(2026, 8, 1), 7, 13, settings.lake_dir, 0.002, 200, False)
    params = TrainParams(
        objectives=["binary"], valid_days=1, num_boost_round=20, min_data_in_leaf=20
    )
    holdout, trained = {}, {}
    for city in CITIES:
        features = build_dataset(settings, city, *TRAIN, max_bad_share=0.05).dataset_dir
        holdout[city] = build_dataset(settings, city, *HOLDOUT, max_bad_share=0.05).dataset_dir
        trained[city] = train(settings, city, features, params)
    env = {
        "MLFLOW_TRACKING_URI": uri,
        "MATCHMAKING_DATA_DIR": str(root),
        "MATCHMAKING_MODEL_NAME_PREFIX": prefix,
        "MATCHMAKING_EXPERIMENT_PREFIX": prefix,
    }
    return Models(settings, env, holdout, trained)


def evaluate(
    models: Models, city: str, model_uri: str, features: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "matchmaking.cli", "evaluate", "--city", city),
            *("--model-uri", model_uri, "--features", str(features)),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **models.env},
        timeout=300,
        check=False,
    )


def only_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def evaluate_runs(models: Models, city: str) -> list[str]:
    client = MlflowClient(tracking_uri=models.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(f"{models.settings.experiment_prefix}-{city}")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.step = 'evaluate'")
    return [r.info.run_id for r in runs]


@pytest.mark.parametrize(
    "model_uri",
    [
        "models:/{prefix}-jakarta/99",  # the model exists, the version does not
        "models:/{prefix}-jakarta@no-such-alias",
        "models:/nobody-jakarta/1",
        "runs:/0123456789abcdef0123456789abcdef/model",
        "not-a-model-uri",
    ],
)
def test_a_model_that_does_not_exist_exits_6_in_one_line(models: Models, model_uri: str) -> None:
    uri = model_uri.format(prefix=models.settings.model_name_prefix)
    res = evaluate(models, "jakarta", uri, models.holdout["jakarta"])
    assert res.returncode == 6, res.stderr
    line = only_error_line(res.stderr)
    assert uri in line and "models:/<name>/<version>" in line  # what is wrong, what to pass
    assert evaluate_runs(models, "jakarta") == []  # nothing logged


def test_a_model_of_another_city_is_refused_with_exit_2(models: Models) -> None:
    bangkok = models.trained["bangkok"].model_uri
    res = evaluate(models, "jakarta", bangkok, models.holdout["jakarta"])
    assert res.returncode == 2, res.stderr
    line = only_error_line(res.stderr)
    assert bangkok in line and "'bangkok'" in line and "'jakarta'" in line
    assert evaluate_runs(models, "jakarta") == []  # no Bangkok model in Jakarta's experiment


def test_the_city_own_model_is_evaluated(models: Models) -> None:
    bangkok = models.trained["bangkok"].model_uri
    res = evaluate(models, "bangkok", bangkok, models.holdout["bangkok"])
    assert res.returncode == 0, res.stderr
    assert "run_id: " in res.stdout
    assert len(evaluate_runs(models, "bangkok")) == 1


@pytest.mark.parametrize(("kind", "probabilistic"), [("rank_score", False), ("probability", True)])
def test_score_kind_is_the_version_tag_not_the_value_range(
    models: Models, kind: str, probabilistic: bool
) -> None:
    """A binary model's scores all lie in [0, 1]; registered again with ``score_kind`` set,
    evaluation follows the tag: no log loss and no calibration for a ``rank_score`` version.
    Fails when evaluate guesses from the values (it did: ``np.all(0 <= s <= 1)``)."""
    import math

    from matchmaking import tracking
    from matchmaking.evaluation.evaluate import evaluate as run_evaluate

    tracking.configure(models.settings)  # the copy's logged-model source resolves there
    source = models.trained["jakarta"]
    client = MlflowClient(tracking_uri=models.env["MLFLOW_TRACKING_URI"])
    mv = client.get_model_version(source.model_name, source.version)
    copy = client.create_model_version(
        source.model_name,
        mv.source,
        run_id=mv.run_id,
        tags={**mv.tags, "score_kind": kind},
        model_id=mv.model_id,
    )
    uri = f"models:/{source.model_name}/{copy.version}"
    result = run_evaluate(models.settings, "jakarta", uri, models.holdout["jakarta"], log_run=False)
    assert math.isfinite(result.metric("logged.model.logloss")) is probabilistic
    assert math.isfinite(result.metric("logged.model.calibration_error")) is probabilistic
    assert math.isfinite(result.metric("logged.model.auc"))  # scored either way
