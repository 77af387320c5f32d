"""`mlflow run mlproject -e main` against the real (PostgreSQL-backed) tracking server."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import date
from pathlib import Path

from mlflow.tracking import MlflowClient

from matchmaking.world.generate import generate_world

REPO = Path(__file__).resolve().parents[2]


def test_main_entry_point_chains_the_steps_and_registers_a_version(
    remote_tracking: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    generate_world(
        cities=["jakarta"],
        start=date(2026, 8, 1),
        days=12,
        seed=5,
        out=data / "lake",
        scale=0.002,
        bookings_per_day=400,
        progress=False,
    )
    prefix = f"it-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": remote_tracking,
        "MATCHMAKING_DATA_DIR": str(data),
        "MATCHMAKING_MODEL_NAME_PREFIX": prefix,
        "MATCHMAKING_EXPERIMENT_PREFIX": prefix,
        # MLflow Projects runs entry-point commands through the shell: use this venv's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_bin), "run", str(REPO / "mlproject"), "-e", "main"]
    cmd += ["-P", "city=jakarta", "-P", "end=2026-08-12", "-P", "train_days=8"]
    cmd += ["-P", "holdout_days=2", "-P", "num_leaves=5", "-P", "objectives=binary"]
    cmd += ["--env-manager", "local", "--experiment-name", f"{prefix}-jakarta"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-12000:]

    client = MlflowClient(tracking_uri=remote_tracking, registry_uri=remote_tracking)
    name = f"{prefix}-jakarta"
    versions = client.search_model_versions(f"name='{name}'")
    assert [v.version for v in versions] == ["1"]
    mv = versions[0]
    for tag in ("data_digest", "features_uri", "params_hash", "objective", "score_kind"):
        assert mv.tags.get(tag), f"version tag {tag} missing: {mv.tags}"
    assert mv.tags["objective"] == "binary"

    train_run = client.get_run(mv.run_id)
    assert train_run.data.params["num_leaves"] == "5"  # the -P override reached training
    assert train_run.data.tags["data_digest"] == mv.tags["data_digest"]
    assert train_run.data.tags.get("mlflow.source.git.commit")
    contexts = {
        d.tags[0].value for d in train_run.inputs.dataset_inputs if d.tags
    }  # mlflow.data.context
    assert {"training", "validation"} <= contexts
    artifacts = {a.path for a in client.list_artifacts(mv.run_id)}
    assert "feature_importance.json" in artifacts

    process_run = client.get_run(train_run.data.tags["process_run_id"])
    assert process_run.data.metrics["rows"] > 0
    assert process_run.data.tags["data_digest"] == mv.tags["data_digest"]
    assert {d.dataset.name for d in process_run.inputs.dataset_inputs} >= {"raw-jakarta"}

    evaluations = client.search_runs(
        [train_run.info.experiment_id], "tags.step = 'evaluate'", max_results=5
    )
    assert len(evaluations) == 1
    ev = evaluations[0]
    assert 0.5 < ev.data.metrics["model.auc"] <= 1.0
    assert ev.data.metrics["oracle.acceptance"] >= ev.data.metrics["nearest_eta.acceptance"]
    plots = {a.path for a in client.list_artifacts(ev.info.run_id, "plots")}
    assert "plots/policy_comparison.png" in plots
