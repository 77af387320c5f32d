"""The tracking server dies in the middle of `matchmaking train`.

The command must give up within the configured bound (MATCHMAKING_TRACKING_RETRIES and
MATCHMAKING_TRACKING_TIMEOUT; MLflow's own defaults retry for about 11 minutes), exit 5 with
one error line and no traceback. The run it had open cannot be closed while the server is
down: it stays RUNNING until the server is back, and the next start of a step against that
server marks it FAILED, saying why.

The test has a tracking server of its own (not the session's, which other tests use) on a
PostgreSQL database of its own (SQLite where the session falls back to it), killed with
SIGKILL and restarted on the same store.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import date
from pathlib import Path

import psycopg2
import pytest
from mlflow.tracking import MlflowClient
from support.tracking_server import TrackingServer

from matchmaking.config import Settings
from matchmaking.processing.step import build_dataset
from matchmaking.world.generate import generate_world

pytestmark = pytest.mark.slow

RETRIES = 2
TIMEOUT_S = 5
# Every request waits at most (RETRIES + 1) * TIMEOUT_S plus the backoff (0 s, 2 s, plus up
# to 0.5 s jitter each); the failing call and the attempt to mark the run FAILED are two
# requests. Twice that leaves room for a loaded machine, far below MLflow's default minutes.
BOUND_S = 2 * 2 * ((RETRIES + 1) * TIMEOUT_S + 2 + RETRIES * 0.5) + 20
LONG_FIT = ["num_boost_round=4000", "early_stopping_rounds=4000", "learning_rate=0.001"]


def _running_runs(server: TrackingServer) -> list[str]:
    """RUNNING runs, read straight from the store (works while the server is down)."""
    query = "SELECT run_uuid FROM runs WHERE status = 'RUNNING'"
    if server.kind == "sqlite":
        assert server.sqlite_path is not None
        with contextlib.closing(sqlite3.connect(server.sqlite_path)) as lite:
            return [row[0] for row in lite.execute(query).fetchall()]
    assert server.database_url is not None
    with contextlib.closing(psycopg2.connect(server.database_url)) as conn, conn.cursor() as cur:
        cur.execute(query)
        return [row[0] for row in cur.fetchall()]


def _train(env: dict[str, str], features: Path, overrides: list[str]) -> subprocess.Popen[str]:
    sets = [
        arg for item in ["objectives=binary", "valid_days=1", *overrides] for arg in ("--set", item)
    ]
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "matchmaking.cli", "train", "--city", "jakarta"),
            *("--features", str(features), "--no-reuse-existing", *sets),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_train_exits_5_quickly_and_the_next_start_marks_the_run_failed(tmp_path: Path) -> None:
    server = TrackingServer()  # restarted on the same store: same PostgreSQL database
    settings = Settings(data_dir=tmp_path / "data")
    generate_world(["jakarta"], date(2026, 8, 1), 6, 17, settings.lake_dir, 0.002, 300, False)
    features = build_dataset(
        settings, "jakarta", date(2026, 8, 2), date(2026, 8, 6), max_bad_share=0.05
    ).dataset_dir
    prefix = f"outage-{uuid.uuid4().hex[:8]}"
    with server:
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": server.uri,
            "MATCHMAKING_DATA_DIR": str(settings.data_dir),
            "MATCHMAKING_MODEL_NAME_PREFIX": prefix,
            "MATCHMAKING_EXPERIMENT_PREFIX": prefix,
            "MATCHMAKING_TRACKING_RETRIES": str(RETRIES),
            "MATCHMAKING_TRACKING_TIMEOUT": str(TIMEOUT_S),
        }
        proc = _train(env, features, LONG_FIT)
        deadline = time.monotonic() + 180
        while not (running := _running_runs(server)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "train never opened a run"
            time.sleep(0.05)
        server.kill()
        killed_at = time.monotonic()
        try:
            _, err = proc.communicate(timeout=BOUND_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"train still retrying {BOUND_S:.0f} s after the server died")
        waited = time.monotonic() - killed_at

        assert proc.returncode == 5, err
        assert "Traceback" not in err, err
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, err
        assert server.uri in errors[0] and "unreachable" in errors[0]
        assert "MATCHMAKING_TRACKING_RETRIES" in errors[0]  # what to change to wait longer
        assert waited < BOUND_S
        # Nobody could close it: the run is still RUNNING in the store.
        assert _running_runs(server) == running

        server.restart()
        env["MLFLOW_TRACKING_URI"] = server.uri
        again = _train(env, features, ["num_boost_round=10"])
        _, err = again.communicate(timeout=300)
        assert again.returncode == 0, err

        client = MlflowClient(tracking_uri=server.uri)
        left = client.get_run(running[0])
        assert left.info.status == "FAILED"
        assert f"process {left.data.tags['owner_pid']} " in left.data.tags["interrupted"]
        assert _running_runs(server) == []
