"""Same inputs and seed: same feature digest, same metrics, same model file bytes."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from support.processed_world import CITY, ProcessedWorld

from matchmaking import tracking
from matchmaking.processing.step import build_dataset
from matchmaking.training.params import load_params
from matchmaking.training.train import train


def _model_file_digest(model_uri: str, dst: Path) -> str:
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    files = sorted(local.rglob("*.lgb"))
    assert files, f"no LightGBM model file under {local}"
    return tracking.file_digest(files[0])


def test_same_inputs_same_model(processed_world: ProcessedWorld, tmp_path: Path) -> None:
    s = processed_world.settings
    w = processed_world.windows
    again = build_dataset(s, CITY, w.train_start, w.train_end, max_bad_share=0.05)
    assert again.digest == processed_world.train.digest
    assert again.dataset_dir == processed_world.train.dataset_dir

    params = load_params(overrides={"objectives": ["binary"], "num_boost_round": 60})
    first = train(s, CITY, again.dataset_dir, params, reuse_existing=False)
    second = train(s, CITY, again.dataset_dir, params, reuse_existing=False)
    assert first.version != second.version
    timing = {k for k in first.metrics if k.startswith("fit_seconds")}
    assert {k: v for k, v in first.metrics.items() if k not in timing} == {
        k: v for k, v in second.metrics.items() if k not in timing
    }
    assert _model_file_digest(first.model_uri, tmp_path / "a") == _model_file_digest(
        second.model_uri, tmp_path / "b"
    )


def test_rerun_reuses_the_registered_version(processed_world: ProcessedWorld) -> None:
    s = processed_world.settings
    params = load_params(overrides={"objectives": ["binary"], "num_boost_round": 40})
    first = train(s, CITY, processed_world.train.dataset_dir, params)
    name = tracking.model_name(s, CITY)
    count = len(MlflowClient().search_model_versions(f"name='{name}'"))
    second = train(s, CITY, processed_world.train.dataset_dir, params)
    assert second.reused and second.version == first.version
    assert len(MlflowClient().search_model_versions(f"name='{name}'")) == count
