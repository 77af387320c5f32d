"""`mlflow run mlproject -e main` against the real (PostgreSQL-backed) tracking server.

The README's command runs as written, from the root of a checkout whose default data dir
holds the world: a temporary root with the project's ``mlproject/``, a ``.venv`` (this
interpreter's environment) and ``data/lake``. Only ``MLFLOW_TRACKING_URI`` is set, as the
README's ``export`` does; the venv is not on ``PATH`` (the README calls ``.venv/bin/mlflow``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from datetime import date
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from matchmaking.world.generate import generate_world

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
# Never inherited by the README runs: the default locations and interpreter must be found.
CLEARED = (
    "MATCHMAKING_DATA_DIR",
    "MATCHMAKING_LAKE_URI",
    "MATCHMAKING_TRACKING_URI",
    "MATCHMAKING_PYTHON",
    "MATCHMAKING_MODEL_NAME_PREFIX",
    "MATCHMAKING_EXPERIMENT_PREFIX",
    "VIRTUAL_ENV",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_ID",
)


def readme_mlflow_run() -> str:
    """The `mlflow run` command of the README's MLflow Projects section, as written (the
    block's ``export`` line is what the test's environment stands in for)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## MLflow Projects") :]
    start = section.index("```bash\n") + len("```bash\n")
    block = section[start : section.index("```", start)]
    assert block.startswith("export MLFLOW_TRACKING_URI="), block
    command = block.split("\n", 1)[1].strip()
    assert command.startswith(".venv/bin/mlflow run mlproject -e main "), command
    return command


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository root as a new user has it after `make demo`'s world: the project,
    the venv, and the world in the default data dir ``data/lake`` (63 days to 2026-10-02)."""
    root = tmp_path_factory.mktemp("checkout")
    shutil.copytree(REPO / "mlproject", root / "mlproject")
    (root / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    generate_world(
        cities=["jakarta"],
        start=date(2026, 8, 1),
        days=63,
        seed=5,
        out=root / "data" / "lake",
        scale=0.002,
        bookings_per_day=150,
        progress=False,
    )
    return root


def readme_env(**extra: str) -> dict[str, str]:
    """The user's shell: no project variables, the venv not on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != VENV_BIN]
    env["PATH"] = os.pathsep.join(path or ["/usr/bin", "/bin"])
    return {**env, **extra}


def test_readme_command_runs_as_written_from_the_repository_root(
    remote_tracking: str, checkout: Path
) -> None:
    command = readme_mlflow_run()
    env = readme_env(MLFLOW_TRACKING_URI=remote_tracking)
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-12000:]
    assert "command not found" not in done.stderr

    # Everything was read from and written to the default data dir of the root, nowhere else.
    assert any((checkout / "data" / "lake" / "features").rglob("manifest.json"))
    assert not (checkout / "mlproject" / "data").exists()
    assert not (checkout / "mlflow.db").exists()

    client = MlflowClient(tracking_uri=remote_tracking, registry_uri=remote_tracking)
    exp = client.get_experiment_by_name("matchmaking-jakarta")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=50)
    by_entry = {r.data.tags.get("mlflow.project.entryPoint"): r for r in runs}
    assert {"main", "process_data", "train", "evaluate"} <= set(by_entry), by_entry.keys()
    assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]

    # Every run logs the value in force: the -P overrides, the defaults otherwise; never ''.
    for run in runs:
        empty = {k: v for k, v in run.data.params.items() if v in ("", "''", '""')}
        assert not empty, (run.data.tags.get("mlflow.project.entryPoint"), empty)
    main_params = by_entry["main"].data.params
    assert main_params["learning_rate"] == "0.03"
    assert main_params["num_leaves"] == "15"
    assert main_params["train_days"] == "28"

    train_run = client.get_run(by_entry["train"].info.run_id)
    params = train_run.data.params
    assert params["learning_rate"] == "0.03"
    assert params["num_leaves"] == "15"
    assert params["num_boost_round"] == "800"  # train.yaml's value, logged as such
    assert not any(k.startswith("effective.") for k in params), params

    version = train_run.data.tags["registered_version"]
    mv = client.get_model_version("matchmaking-jakarta", version)
    assert mv.run_id == train_run.info.run_id
    assert mv.tags["features_uri"].startswith((checkout / "data" / "lake").as_uri())
    process_run = client.get_run(train_run.data.tags["process_run_id"])
    assert process_run.data.tags["data_digest"] == mv.tags["data_digest"]
    assert process_run.data.params["start"] == "2026-08-29"  # 28 + 7 days ending 2026-10-02

    ev = by_entry["evaluate"]
    assert ev.data.params.get("model_uri") == f"models:/matchmaking-jakarta/{version}"
    assert 0.5 < ev.data.metrics["logged.model.auc"] <= 1.0


def test_mlflow_run_without_a_tracking_uri_refuses_mlflow_default_store(
    checkout: Path,
) -> None:
    """Without MLFLOW_TRACKING_URI, `mlflow run` itself creates the run in ./mlflow.db: the
    step refuses it (exit 2, says what to export), leaves it FAILED, writes nothing else."""
    cmd = ".venv/bin/mlflow run mlproject -e process_data -P city=jakarta"
    cmd += " -P start=2026-09-26 -P end=2026-10-02 --env-manager local"
    done = subprocess.run(
        ["bash", "-c", cmd],
        cwd=checkout,
        env=readme_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode != 0
    assert "MLflow's built-in default store" in done.stderr, done.stderr[-6000:]
    assert "export MLFLOW_TRACKING_URI=sqlite:///$PWD/data/mlflow.db" in done.stderr
    assert not (checkout / "data" / "mlflow.db").exists()
    stray = f"sqlite:///{checkout / 'mlflow.db'}"
    runs = MlflowClient(tracking_uri=stray).search_runs(["0"])
    assert [r.info.status for r in runs] == ["FAILED"]

    # The README's local form: the project's store, from the repository root.
    local = "export MLFLOW_TRACKING_URI=sqlite:///$PWD/data/mlflow.db && " + cmd
    done = subprocess.run(
        ["bash", "-c", local],
        cwd=checkout,
        env=readme_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-12000:]
    store = f"sqlite:///{checkout / 'data' / 'mlflow.db'}"
    runs = MlflowClient(tracking_uri=store).search_runs(["0"])
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert runs[0].data.tags["features_dir"].startswith(str(checkout / "data" / "lake"))


def test_the_stray_default_store_is_ignored_by_git() -> None:
    done = subprocess.run(
        ["git", "check-ignore", "-q", "mlflow.db"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, "mlflow.db is not ignored by .gitignore"


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
    assert 0.5 < ev.data.metrics["logged.model.auc"] <= 1.0
    sim = ev.data.metrics
    assert sim["sim.replay.oracle.acceptance"] >= sim["sim.replay.nearest_eta.acceptance"]
    plots = {a.path for a in client.list_artifacts(ev.info.run_id, "plots")}
    assert "plots/sim_replay.png" in plots
