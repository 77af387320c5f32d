"""A step killed by a signal leaves no run RUNNING for good.

SIGTERM: the CLI's handler unwinds the step, MLflow marks its run FAILED, exit 143.
SIGKILL: nothing can run in the process; the run stays RUNNING until the next step of the
city starts and finds that the process owning it is gone, then marks it FAILED.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from matchmaking.config import Settings
from matchmaking.processing.step import build_dataset
from matchmaking.world.generate import generate_world

pytestmark = pytest.mark.slow

LONG_FIT = ["num_boost_round=4000", "early_stopping_rounds=4000", "learning_rate=0.001"]


@dataclass(frozen=True)
class Store:
    db: Path
    env: dict[str, str]
    features: Path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("cli-signals")
    settings = Settings(data_dir=root)
    generate_world(["jakarta"], date(2026, 8, 1), 6, 19, settings.lake_dir, 0.002, 300, False)
    features = build_dataset(
        settings, "jakarta", date(2026, 8, 2), date(2026, 8, 6), max_bad_share=0.05
    ).dataset_dir
    prefix = f"sig-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MATCHMAKING_DATA_DIR": str(root),
        "MATCHMAKING_MODEL_NAME_PREFIX": prefix,
        "MATCHMAKING_EXPERIMENT_PREFIX": prefix,
    }
    return Store(root / "mlflow.db", env, features)


def _running(store: Store) -> list[str]:
    if not store.db.exists():
        return []
    with contextlib.closing(sqlite3.connect(store.db, timeout=30)) as db:
        try:
            rows = db.execute("SELECT run_uuid FROM runs WHERE status = 'RUNNING'").fetchall()
        except sqlite3.OperationalError:  # the tables are not created yet
            return []
    return [row[0] for row in rows]


def _train_until_running(store: Store) -> tuple[subprocess.Popen[str], str]:
    """Start a long `train` and return once its run is RUNNING in the store."""
    sets = [a for item in ["objectives=binary", "valid_days=1", *LONG_FIT] for a in ("--set", item)]
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "matchmaking.cli", "train", "--city", "jakarta"),
            *("--features", str(store.features), "--no-reuse-existing", *sets),
        ],
        env=store.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    before = set(_running(store))
    deadline = time.monotonic() + 180
    while not (new := set(_running(store)) - before):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"train never opened a run: {proc.communicate()[1][-3000:]}")
        time.sleep(0.05)
    return proc, new.pop()


def _client(store: Store) -> MlflowClient:
    return MlflowClient(tracking_uri=store.env["MLFLOW_TRACKING_URI"])


def test_sigterm_marks_the_run_failed_and_exits_143(store: Store) -> None:
    proc, run_id = _train_until_running(store)
    time.sleep(0.5)  # into the step's work, past the run's creation
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "SIGTERM" in errors[0], err
    assert _client(store).get_run(run_id).info.status == "FAILED"


def test_after_sigkill_the_next_start_marks_the_run_failed(store: Store) -> None:
    proc, run_id = _train_until_running(store)
    proc.kill()
    proc.communicate(timeout=60)
    assert _client(store).get_run(run_id).info.status == "RUNNING"  # nothing could close it

    nxt = subprocess.run(
        [
            *(sys.executable, "-m", "matchmaking.cli", "process", "--city", "jakarta"),
            *("--start", "2026-08-05", "--end", "2026-08-06"),
        ],
        env=store.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert nxt.returncode == 0, nxt.stderr
    left = _client(store).get_run(run_id)
    assert left.info.status == "FAILED"
    assert f"process {proc.pid} " in left.data.tags["interrupted"]
    assert left.data.tags["owner_pid"] == str(proc.pid)
    assert f"run {run_id} was left RUNNING" in nxt.stderr  # said so, as a warning
