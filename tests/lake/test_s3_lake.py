"""The lake, the feature datasets, training and evaluation on object storage (moto's S3).

One small world is generated twice, to S3 and to a local directory, with the same arguments:
whatever is read back from S3 must equal the local copy, byte for byte where it is hashed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow as pa
import pytest
import s3fs
from mlflow.tracking import MlflowClient
from support.s3 import new_bucket
from typer.testing import CliRunner

from matchmaking import lake
from matchmaking.cli import app
from matchmaking.config import Settings
from matchmaking.errors import ConfigError, StorageError
from matchmaking.evaluation.evaluate import evaluate
from matchmaking.lake import storage
from matchmaking.lake.datasets import day_files, read_dataset, window_digest
from matchmaking.lake.storage import Location
from matchmaking.processing.step import ProcessResult, build_dataset, process
from matchmaking.schema import SUCCESS_MARKER
from matchmaking.training.params import load_params
from matchmaking.training.train import train
from matchmaking.world.generate import generate_world

CITY = "jakarta"
START = date(2026, 8, 1)
DAYS = 3
TRAIN = (START, START + timedelta(days=1))
HOLDOUT = (START + timedelta(days=2), START + timedelta(days=2))


@dataclass(frozen=True)
class Worlds:
    s3: Settings
    local: Settings
    s3_train: ProcessResult
    local_train: ProcessResult


def _generate(out: str | Path) -> None:
    generate_world([CITY], START, DAYS, 5, out, 0.002, 200, progress=False)


@pytest.fixture(scope="module")
def worlds(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Worlds:
    root = tmp_path_factory.mktemp("worlds")
    s3 = Settings(data_dir=root / "s3-data", lake_uri=f"{new_bucket()}/prod/lake")
    local = Settings(data_dir=root / "local-data")
    _generate(s3.lake_dir)
    _generate(local.lake_dir)
    return Worlds(
        s3, local, build_dataset(s3, CITY, *TRAIN, 0.05), build_dataset(local, CITY, *TRAIN, 0.05)
    )


def test_settings_take_the_lake_uri(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, lake_uri="s3://b/lake/")
    assert s.lake_dir == "s3://b/lake" and s.features_dir == "s3://b/lake/features"
    assert Settings(data_dir=tmp_path).lake_dir == tmp_path / "lake"
    elsewhere = Settings(data_dir=tmp_path, lake_uri=(tmp_path / "warehouse").as_uri())
    assert elsewhere.raw_dir == tmp_path / "warehouse" / "raw"


def test_world_on_s3_reads_back_like_the_local_one(worlds: Worlds) -> None:
    s3, local = worlds.s3.lake_dir, worlds.local.lake_dir
    assert isinstance(s3, Location) and not s3.is_local and str(s3).startswith("s3://")
    assert lake.list_cities(s3) == lake.list_cities(local) == [CITY]
    days = [START + timedelta(days=i) for i in range(DAYS)]
    assert lake.list_dates(s3, CITY) == lake.list_dates(local, CITY) == days
    assert lake.list_dates(s3, CITY, lake.TRUTH) == days
    end = days[-1]
    for table in ("bookings", "candidates", "ground_truth"):
        got = lake.read_partitions(s3, CITY, table, START, end)
        assert got.equals(lake.read_partitions(local, CITY, table, START, end)), table
    assert lake.read_drivers(s3, CITY).equals(lake.read_drivers(local, CITY))
    assert lake.read_driver_truth(s3, CITY).equals(lake.read_driver_truth(local, CITY))
    with pytest.raises(StorageError, match="2026-08-04"):
        lake.read_partitions(s3, CITY, "bookings", START, end + timedelta(days=1))


def _tiny(tag: str) -> dict[str, pa.Table]:
    return {"bookings": pa.table({"booking_id": [f"{tag}-0", f"{tag}-1"], "fare": [1.0, 2.0]})}


def test_a_partition_without_success_is_invisible(bucket: str) -> None:
    root = f"{bucket}/lake"
    day, other = date(2026, 10, 1), date(2026, 10, 2)
    lake.write_partition(root, lake.RAW, "hue", day, _tiny("old"))
    # A writer that dies before commit (no abort either: a killed worker).
    crashed = lake.PartitionWriter(root, lake.RAW, "hue", other)
    lake.write_parquet(crashed.file("bookings.parquet"), _tiny("new")["bookings"])
    assert lake.list_dates(root, "hue") == [day]
    with pytest.raises(StorageError, match="2026-10-02"):
        lake.read_partitions(root, "hue", "bookings", day, other)
    # Replacing a partition takes its marker away first, and publishes the marker last.
    with lake.PartitionWriter(root, lake.RAW, "hue", day) as part:
        assert lake.list_dates(root, "hue") == []
        lake.write_parquet(part.file("bookings.parquet"), _tiny("new")["bookings"])
        assert not lake.is_complete(lake.partition_dir(root, lake.RAW, "hue", day))
        part.commit()
    got = lake.read_partitions(root, "hue", "bookings", day, day)
    assert got["booking_id"].to_pylist() == ["new-0", "new-1"]
    fs = s3fs.S3FileSystem()
    marker = f"{bucket.removeprefix('s3://')}/lake/raw/city=hue/date={day}/{SUCCESS_MARKER}"
    assert fs.exists(marker)
    # An aborted writer removes what it wrote.
    with lake.PartitionWriter(root, lake.RAW, "hue", other) as part:
        lake.write_parquet(part.file("bookings.parquet"), _tiny("x")["bookings"])
    assert not storage.exists(lake.partition_dir(root, lake.RAW, "hue", other))


def test_feature_dataset_on_s3_has_the_local_digest(worlds: Worlds) -> None:
    s3, local = worlds.s3_train, worlds.local_train
    assert isinstance(s3.dataset_dir, Location) and not s3.dataset_dir.is_local
    assert str(s3.dataset_dir).startswith(f"{worlds.s3.lake_dir}/features/city={CITY}/")
    assert s3.digest == local.digest and s3.rows == local.rows > 0
    rows, manifest = read_dataset(s3.dataset_dir)
    local_rows, local_manifest = read_dataset(local.dataset_dir)
    pd.testing.assert_frame_equal(rows, local_rows)
    assert manifest == local_manifest
    # The window lists its days, each published on S3 with the digest of its bytes there.
    days = manifest["days"]
    assert isinstance(days, list) and len(days) == 2
    for day, path in zip(days, day_files(s3.dataset_dir, manifest), strict=True):
        assert not path.is_local and str(path).startswith(f"{worlds.s3.lake_dir}/features/")
        assert storage.digest(path) == day["digest"]
    assert window_digest(days) == s3.digest
    # A rerun reuses the published dataset (same content address).
    again = build_dataset(worlds.s3, CITY, *TRAIN, 0.05)
    assert again.dataset_dir == s3.dataset_dir
    with pytest.raises(StorageError, match="no _SUCCESS"):
        read_dataset(f"{worlds.s3.lake_dir}/features/city={CITY}/nothing-here")


def test_process_train_and_evaluate_from_s3(worlds: Worlds, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, lake_uri=str(worlds.s3.lake_dir), tracking_uri=mlflow.get_tracking_uri()
    )
    holdout = process(settings, CITY, *HOLDOUT)
    assert isinstance(holdout.dataset_dir, Location) and not holdout.dataset_dir.is_local
    process_tags = MlflowClient().get_run(str(holdout.run_id)).data.tags
    assert process_tags["features_uri"] == holdout.dataset_dir
    params = load_params(
        overrides={
            "objectives": ["binary"],
            "num_boost_round": 20,
            "valid_days": 1,
            "min_data_in_leaf": 20,
        }
    )
    features_uri = str(worlds.s3_train.dataset_dir)
    trained = train(settings, CITY, features_uri, params)
    version = MlflowClient().get_model_version(trained.model_name, trained.version)
    assert version.tags["features_uri"] == features_uri
    table = mlflow.artifacts.download_artifacts(
        f"{trained.model_uri}/extra_files/driver_table.parquet", dst_path=str(tmp_path / "model")
    )
    assert storage.digest(Path(table)) == read_dataset(features_uri)[1]["driver_table_digest"]
    result = evaluate(settings, CITY, trained.model_uri, holdout.dataset_dir, seed=7)
    assert 0.5 < result.metric("logged.model.auc") <= 1.0
    inputs = mlflow.get_run(str(result.run_id)).inputs.dataset_inputs
    assert json.loads(inputs[0].dataset.source)["uri"] == holdout.dataset_dir


def test_cli_writes_and_trains_on_the_configured_lake_uri(
    s3_endpoint: str, worlds: Worlds, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = f"{new_bucket()}/lake"
    monkeypatch.setenv("MATCHMAKING_LAKE_URI", root)
    runner = CliRunner()
    generated = runner.invoke(
        app,
        [
            *("world", "generate", "--cities", CITY, "--start", "2026-08-01", "--days", "1"),
            *("--bookings-per-day", "50", "--no-progress"),
        ],
    )
    assert generated.exit_code == 0, generated.output
    assert lake.list_dates(root, CITY) == [START]
    trained = runner.invoke(
        app,
        [
            *("train", "--city", CITY, "--features", str(worlds.s3_train.dataset_dir)),
            *("--set", "objectives=binary", "--set", "num_boost_round=10"),
            *("--set", "valid_days=1", "--set", "min_data_in_leaf=20"),
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert "model_uri: models:/" in trained.output


def test_storage_options_come_from_the_environment(
    s3_endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv(
        "MATCHMAKING_LAKE_STORAGE_OPTIONS",
        json.dumps({"client_kwargs": {"endpoint_url": s3_endpoint}, "skip_instance_cache": True}),
    )
    lake.write_partition(bucket, lake.RAW, "hue", START, _tiny("a"))
    assert lake.list_dates(bucket, "hue") == [START]
    monkeypatch.setenv("MATCHMAKING_LAKE_STORAGE_OPTIONS", "[1]")
    with pytest.raises(ConfigError, match="JSON object"):
        storage.storage_options()
