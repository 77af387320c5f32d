"""Round trips through a real MLflow tracking server over HTTP: tracking, artifacts, registry."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import mlflow
import numpy as np
import psycopg2
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression
from support.tracking_server import TrackingServer, choose_backend

PARAMS = {"objective": "lambdarank", "num_leaves": "31", "city": "lisbon"}
ARTIFACT_BYTES = b"driver_id,eta_s\nd-1,120\nd-2,300\n\x00\xff binary tail"


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _backend_run_ids(server: TrackingServer, experiment_id: str) -> set[str]:
    """Run ids read straight from the server's database, bypassing MLflow."""
    query = "SELECT run_uuid FROM runs WHERE experiment_id = {}"
    if server.kind == "postgresql":
        assert server.database_url is not None
        with psycopg2.connect(server.database_url) as conn, conn.cursor() as cur:
            cur.execute(query.format("%s"), (int(experiment_id),))
            rows = cur.fetchall()
        conn.close()
    else:
        assert server.sqlite_path is not None
        with sqlite3.connect(server.sqlite_path) as conn:
            rows = conn.execute(query.format("?"), (int(experiment_id),)).fetchall()
        conn.close()
    return {row[0] for row in rows}


def test_run_params_metrics_and_artifact_round_trip(
    remote_tracking: str, tracking_server: TrackingServer, tmp_path: Path
) -> None:
    experiment_id = mlflow.create_experiment(_unique("roundtrip"))
    experiment = mlflow.get_experiment(experiment_id)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")

    upload = tmp_path / "upload" / "candidates.csv"
    upload.parent.mkdir()
    upload.write_bytes(ARTIFACT_BYTES)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_params(PARAMS)
        for step, value in enumerate([0.61, 0.67, 0.70]):
            mlflow.log_metric("valid_ndcg", value, step=step)
        mlflow.log_artifact(str(upload), artifact_path="tables")
    run_id = run.info.run_id

    client = MlflowClient(tracking_uri=remote_tracking)
    fetched = client.get_run(run_id)
    assert fetched.info.status == "FINISHED"
    assert fetched.data.params == PARAMS
    assert fetched.data.metrics == {"valid_ndcg": 0.70}
    history = client.get_metric_history(run_id, "valid_ndcg")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 0.61),
        (1, 0.67),
        (2, 0.70),
    ]
    assert [f.path for f in client.list_artifacts(run_id, "tables")] == ["tables/candidates.csv"]

    download = Path(client.download_artifacts(run_id, "tables/candidates.csv", str(tmp_path)))
    assert download.read_bytes() == ARTIFACT_BYTES
    # The bytes went through the proxy into the server's artifact store, not a local path.
    stored = list(tracking_server.artifacts_dir.rglob("candidates.csv"))
    assert [p.read_bytes() for p in stored] == [ARTIFACT_BYTES]

    assert run_id in _backend_run_ids(tracking_server, experiment_id)


def test_registry_alias_round_trip(remote_tracking: str) -> None:
    name = _unique("matchmaking-test")
    x = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.9, 0.1]])
    y = np.array([0, 1, 0, 1])
    model = LogisticRegression().fit(x, y)

    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name=name,
            pip_requirements=["scikit-learn"],  # skips the slow requirement inference
        )
    version = info.registered_model_version
    assert version is not None

    client = MlflowClient(tracking_uri=remote_tracking, registry_uri=remote_tracking)
    client.set_registered_model_alias(name, "production", version)
    assert client.get_model_version_by_alias(name, "production").version == str(version)

    loaded = mlflow.pyfunc.load_model(f"models:/{name}@production")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_server_uses_the_announced_backend(tracking_server: TrackingServer) -> None:
    announced = choose_backend()  # the decision the report header printed
    assert tracking_server.kind == announced.kind
    if tracking_server.kind == "postgresql":
        assert tracking_server.backend_uri.startswith("postgresql+psycopg2://")
        assert tracking_server.database_url is not None
        with psycopg2.connect(tracking_server.database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            assert cur.fetchone() == (tracking_server.database,)
        conn.close()
    else:
        assert tracking_server.backend_uri == f"sqlite:///{tracking_server.sqlite_path}"
